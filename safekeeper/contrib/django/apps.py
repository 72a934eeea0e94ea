from __future__ import annotations

from django.apps import AppConfig


class SafekeeperConfig(AppConfig):  # type: ignore[misc]  # Django is untyped here
    name = "safekeeper.contrib.django"
    label = "safekeeper_django"
    verbose_name = "safekeeper"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from safekeeper.contrib.django import signals

        signals.connect()
