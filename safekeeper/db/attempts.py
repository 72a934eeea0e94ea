"""Removing SCORM attempts (``services.packaging.attempts``) with what they belong to."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete
from sqlalchemy.orm import Session

from safekeeper.db.models import PackageAttempt


def delete_for_users(session: Session, user_ids: Sequence[int]) -> None:
    """A deleted or erased user's learning records go with them."""
    session.execute(
        delete(PackageAttempt)
        .where(PackageAttempt.user_id.in_(user_ids))
        .execution_options(synchronize_session=False)
    )


def delete_for_namespaces(session: Session, namespace_ids: Sequence[int]) -> None:
    """Before deleting namespaces: their attempts name them."""
    session.execute(
        delete(PackageAttempt)
        .where(PackageAttempt.namespace_id.in_(namespace_ids))
        .execution_options(synchronize_session=False)
    )
