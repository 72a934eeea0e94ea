"""End a user's sessions on every path Django signals: delete (one, a queryset, or a
cascade from a parent such as an organisation — Django sends ``post_delete`` for each
collected row once a receiver is connected), deactivation and password change by
``save``. ``QuerySet.update`` and ``bulk_update`` send nothing: the session engine's
check on load covers those."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save, pre_save

from safekeeper.contrib.django.sessions import end_sessions_of

_PASSWORD_CHANGED = "_safekeeper_password_changed"


def _user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    end_sessions_of([instance.pk])


def _remember_password_change(sender: Any, instance: Any, **kwargs: Any) -> None:
    if instance.pk is None or kwargs.get("raw"):
        return
    stored = sender._default_manager.filter(pk=instance.pk).values_list("password", flat=True)
    previous = stored.first()
    setattr(instance, _PASSWORD_CHANGED, previous is not None and previous != instance.password)


def _user_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if created or kwargs.get("raw"):
        return
    deactivated = not getattr(instance, "is_active", True)
    if deactivated or getattr(instance, _PASSWORD_CHANGED, False):
        # A password change ends every session; Django's update_session_auth_hash then
        # starts a fresh one for the browser that made the change.
        end_sessions_of([instance.pk])


def connect() -> None:
    User = get_user_model()
    uid = "safekeeper-sessions"
    post_delete.connect(_user_deleted, sender=User, dispatch_uid=f"{uid}-delete")
    pre_save.connect(_remember_password_change, sender=User, dispatch_uid=f"{uid}-pre-save")
    post_save.connect(_user_saved, sender=User, dispatch_uid=f"{uid}-save")
