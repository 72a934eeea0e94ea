"""``manage.py safekeeper_sessions USERNAME [--end]``: list or end a user's sessions."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from safekeeper.contrib.django.models import SafekeeperSession
from safekeeper.contrib.django.sessions import end_sessions_of


class Command(BaseCommand):  # type: ignore[misc]  # Django is untyped here
    help = "List a user's sessions, or end them all with --end."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--end", action="store_true", help="end every session")

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        try:
            user = User._default_manager.get_by_natural_key(options["username"])
        except User.DoesNotExist:
            raise CommandError(f"no user {options['username']!r}") from None
        if options["end"]:
            ended = end_sessions_of([user.pk])
            self.stdout.write(f"ended {ended} session{'' if ended == 1 else 's'}")
            return
        rows = SafekeeperSession.objects.filter(user_id=str(user.pk)).order_by("expire_date")
        for row in rows:
            self.stdout.write(f"{row.key_hash[:12]}  expires {row.expire_date.isoformat()}")
        if not rows:
            self.stdout.write("no sessions")
