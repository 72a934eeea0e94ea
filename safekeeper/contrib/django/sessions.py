"""``SESSION_ENGINE = "safekeeper.contrib.django.sessions"``.

Django's database engine keyed by the SHA-256 of the session key, with the user's id in
its own column so that every way of removing a user can end that user's sessions in
one indexed DELETE (``signals.py``). Hooks cannot see ``QuerySet.update`` or
``bulk_update``, so a session is also checked against its user on every load: a user
who is gone or inactive gets an empty session — Django's ordinary signed-out state,
not an error page — and the row is deleted.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.utils import timezone

from safekeeper.contrib.django.models import SafekeeperSession


def key_hash(session_key: str) -> str:
    return hashlib.sha256(session_key.encode()).hexdigest()


def end_sessions_of(user_ids: list[Any]) -> int:
    """Delete every session of these users; return how many."""
    if not user_ids:
        return 0
    deleted, _ = SafekeeperSession.objects.filter(
        user_id__in=[str(user_id) for user_id in user_ids]
    ).delete()
    return int(deleted)


def _user_is_active(user_id: Any) -> bool:
    User = get_user_model()
    try:
        user = User._default_manager.get(pk=user_id)
    except (User.DoesNotExist, ValueError, TypeError):
        return False
    return bool(getattr(user, "is_active", True))


class SessionStore(DatabaseSessionStore):  # type: ignore[misc]  # Django is untyped here
    @classmethod
    def get_model_class(cls) -> type[SafekeeperSession]:
        return SafekeeperSession

    def _get_session_from_db(self) -> SafekeeperSession | None:
        if self.session_key is None:
            return None
        try:
            row: SafekeeperSession = SafekeeperSession.objects.get(
                key_hash=key_hash(self.session_key), expire_date__gt=timezone.now()
            )
            return row
        except SafekeeperSession.DoesNotExist:
            self._session_key = None
            return None

    def load(self) -> dict[str, Any]:
        row = self._get_session_from_db()
        if row is None:
            return {}
        data: dict[str, Any] = self.decode(row.session_data)
        user_id = data.get(SESSION_KEY)
        if user_id is not None and not _user_is_active(user_id):
            row.delete()  # a removal path no hook saw: end it now
            self._session_key = None
            return {}
        return data

    def exists(self, session_key: str) -> bool:
        return bool(SafekeeperSession.objects.filter(key_hash=key_hash(session_key)).exists())

    def create_model_instance(self, data: dict[str, Any]) -> SafekeeperSession:
        return SafekeeperSession(
            key_hash=key_hash(self._get_or_create_session_key()),
            user_id=str(data.get(SESSION_KEY, "")),
            session_data=self.encode(data),
            expire_date=self.get_expiry_date(),
        )

    def delete(self, session_key: str | None = None) -> None:
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        SafekeeperSession.objects.filter(key_hash=key_hash(session_key)).delete()

    @classmethod
    def clear_expired(cls) -> None:
        SafekeeperSession.objects.filter(expire_date__lt=timezone.now()).delete()
