"""The sign-in sessions table, kept apart from the catalog.

Sessions are written on every sign-in and touched as users come and go; on SQLite
they live in their own file (``sessions.db`` in the data directory) so that this
traffic never waits on, or holds up, the catalog's single writer. On PostgreSQL the
table sits in the main database. Either way it has its own metadata and its own
migration history (``safekeeper/migrations_sessions``, version table
``alembic_version_sessions``), and no foreign keys into the catalog: every request
re-checks the user and tenant (see ``safekeeper.services.access.sessions``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from safekeeper.db.models import UTCDateTime


class SessionBase(DeclarativeBase):
    pass


class LoginSession(SessionBase):
    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_user", "user_id"),
        Index("ix_sessions_tenant", "tenant_id"),
    )
    #: SHA-256 (hex) of the 256-bit token in the cookie; the token itself is never stored.
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger)
    #: Copied from the user so a tenant's sessions end with one indexed DELETE.
    tenant_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    idle_expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    absolute_expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ip: Mapped[str | None] = mapped_column(String(100), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(Text, nullable=True)
