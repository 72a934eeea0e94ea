"""Tables. The schema itself is owned by the Alembic migrations in
``safekeeper/migrations``; these models must match them (a test compares the two)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC, on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use aware UTC")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        if not isinstance(moment, datetime):
            raise TypeError(f"expected a datetime from the database, got {value!r}")
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class CopyState(enum.StrEnum):
    PENDING = "pending"
    PRESENT = "present"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"
    MISSING = "missing"
    CORRUPT = "corrupt"


COPY_STATES = tuple(state.value for state in CopyState)
LOCATION_KINDS = ("source", "buffer", "archive", "processing", "cache")


class Base(DeclarativeBase):
    pass


#: The partial unique indexes and their predicates (see ``_partial_unique``).
PARTIAL_INDEXES: list[tuple[Index, str]] = []


def _partial_unique(name: str, *columns: str, where: str) -> Index:
    """A unique index over the rows matching ``where``, with SQLite's predicate.

    PostgreSQL's predicate is added by ``add_postgresql_predicates`` when a PostgreSQL
    engine is made: naming ``postgresql_where`` here makes SQLAlchemy import its whole
    PostgreSQL dialect to validate the keyword, in every process — ~20 ms of every
    command's start-up on SQLite (tests/cli/test_startup.py keeps it out)."""
    index = Index(name, *columns, unique=True, sqlite_where=text(where))
    PARTIAL_INDEXES.append((index, where))
    return index


def add_postgresql_predicates() -> None:
    """Give the partial indexes their PostgreSQL predicate (idempotent). The schema is
    the migrations' (which state it themselves); this keeps the models describing it
    on PostgreSQL too, for DDL made from them."""
    for index, where in PARTIAL_INDEXES:
        index.dialect_kwargs["postgresql_where"] = text(where)


class Site(Base):
    __tablename__ = "sites"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)


class Location(Base):
    __tablename__ = "locations"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('source', 'buffer', 'archive', 'processing', 'cache')",
            name="location_kind",
        ),
        # One store, one location: two rows can never claim the same marker.
        Index("ux_locations_store_uuid", "store_uuid", unique=True),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    store_url: Mapped[str] = mapped_column(Text)
    #: The uuid of the identity marker in the location's store (``stores.marker``),
    #: recorded when the location is first set up; NULL until then.
    store_uuid: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Blob(Base):
    __tablename__ = "blobs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: When the last reference went away (or creation, if it never had one); NULL while
    #: referenced. The garbage rule's grace period counts from here.
    unreferenced_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class IdSequence(Base):
    """A persisted counter. Row ``blobs`` hands out blob serial numbers on SQLite, where
    ``max(rowid) + 1`` would hand out a rolled-back number again (``db.blob_ids``);
    PostgreSQL uses the column's own sequence and leaves the row alone."""

    __tablename__ = "id_sequences"
    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    next_value: Mapped[int] = mapped_column(BigInteger)


class Copy(Base):
    """That a blob is, is becoming, or was at a location. ``deleted`` rows stay for audit."""

    __tablename__ = "copies"
    __table_args__ = (
        CheckConstraint(
            "state IN ('pending', 'present', 'deleting', 'deleted', 'failed', 'missing', "
            "'corrupt')",
            name="copy_state",
        ),
        # At most one live row per (blob, location); deleted rows are history.
        _partial_unique("uq_copies_live", "blob_id", "location_id", where="state != 'deleted'"),
        Index("ix_copies_location_state", "location_id", "state"),
        Index("ix_copies_blob_state", "blob_id", "state"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id"))
    location_id: Mapped[int] = mapped_column(ForeignKey("locations.id"))
    state: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: ``ObjectInfo.fingerprint`` of the object when its bytes were last hashed right
    #: (NULL: unknown; gc then re-hashes before relying on the copy).
    fingerprint: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_access: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: While ``deleting``: the claimant's token. Only the holder of the current token
    #: may delete the object or record the copy ``deleted``; taking a claim over (stale
    #: recovery) or back (a hold, a staging job) changes or clears it (invariant 12).
    claim_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: When the claimant passed its fence, i.e. started the physical delete. A claim
    #: that has not can be taken back by a hold or a job; one that has cannot.
    fenced_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ClockFloor(Base):
    """One row: the latest time a safekeeper process has used for a safety timestamp.

    Time as the database has seen it never goes backwards: a process whose clock is
    behind this floor writes the floor instead (``safekeeper.db.clock``)."""

    __tablename__ = "clock_floor"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    high_water: Mapped[datetime] = mapped_column(UTCDateTime)


class Namespace(Base):
    __tablename__ = "namespaces"
    __table_args__ = (Index("ix_namespaces_tenant", "tenant_id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The tenant whose users may see it; NULL: only admins (and the CLI) reach it.
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"), nullable=True)
    #: A user's own namespace: erasing the user removes its references.
    owner_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)


class Reference(Base):
    """``(namespace, key, label) → blob``; putting a new blob replaces the old one."""

    __tablename__ = "refs"
    __table_args__ = (
        UniqueConstraint("namespace_id", "key", "label", name="uq_refs_name"),
        Index("ix_refs_blob", "blob_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id"))
    key: Mapped[str] = mapped_column(String(1000))
    label: Mapped[str] = mapped_column(String(200))
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The user who created or last re-pointed it through a tenant path (API, dashboard);
    #: NULL when set from the CLI or before this was recorded. No foreign key: user ids
    #: are never reused, so a hard-deleted user's id names nobody else.
    set_by_user_id: Mapped[int | None] = mapped_column(BigId, nullable=True)


class AuditEntry(Base):
    """One line of the audit trail: who did what to which copy, by which rule, on what evidence."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_blob", "blob_sha256"),
        Index("ix_audit_at", "at"),
        Index("ix_audit_location", "location"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(50))
    blob_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    location: Mapped[str | None] = mapped_column(String(200), nullable=True)
    rule: Mapped[str | None] = mapped_column(String(100), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    evidence: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    #: Stopped by an operator (``safekeeper tasks cancel``): never claimed again.
    CANCELLED = "cancelled"


class Task(Base):
    """A unit of work (transfer, verify, delete) the task engine runs at most once at a time.

    The row is the truth; a Celery message or an in-process queue entry only says "look
    at task N". Claiming is a conditional UPDATE, and a running task whose heartbeat is
    older than the timeout can be claimed again by exactly one worker.
    """

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(
            "state IN ('queued', 'running', 'done', 'failed', 'cancelled')", name="task_state"
        ),
        Index("ix_tasks_state_due", "state", "not_before"),
        Index("ix_tasks_source_copy", "source_copy_id"),
        Index("ix_tasks_copy", "copy_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20))
    #: The site whose workers can run it (the target location's site).
    site: Mapped[str] = mapped_column(String(200))
    #: The copy the task works on (a transfer's target, a verify's or a delete's subject).
    copy_id: Mapped[int] = mapped_column(ForeignKey("copies.id"))
    #: A transfer's source copy: protected from deletion while the task is live.
    source_copy_id: Mapped[int | None] = mapped_column(ForeignKey("copies.id"), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Kind-specific arguments as JSON (a gc batch: its location, copies and actor).
    payload: Mapped[str | None] = mapped_column(Text, nullable=True)


class Hold(Base):
    """Forbids deleting any copy of a blob, or of any blob a namespace references."""

    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint("(blob_id IS NULL) != (namespace_id IS NULL)", name="hold_has_one_target"),
        Index("ix_holds_blob", "blob_id"),
        Index("ix_holds_namespace", "namespace_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    blob_id: Mapped[int | None] = mapped_column(ForeignKey("blobs.id"), nullable=True)
    namespace_id: Mapped[int | None] = mapped_column(ForeignKey("namespaces.id"), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class StagingJob(Base):
    """A job that needs some blobs at a processing location until it ends."""

    __tablename__ = "staging_jobs"
    __table_args__ = (
        _partial_unique("uq_staging_jobs_active_name", "name", where="ended_at IS NULL"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    location_id: Mapped[int] = mapped_column(ForeignKey("locations.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class StagingJobBlob(Base):
    __tablename__ = "staging_job_blobs"
    __table_args__ = (Index("ix_staging_job_blobs_blob", "blob_id"),)
    job_id: Mapped[int] = mapped_column(ForeignKey("staging_jobs.id"), primary_key=True)
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id"), primary_key=True)


PACKAGE_KINDS = ("scorm12", "scorm2004", "html")


class Package(Base):
    """What validation learned about a zip blob: what it is and where it starts.

    Keyed by blob, so the same zip uploaded under many references is validated and
    described once; the row goes when nothing references the blob any more (gc).
    """

    __tablename__ = "packages"
    __table_args__ = (
        CheckConstraint("kind IN ('scorm12', 'scorm2004', 'html')", name="package_kind"),
    )
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    #: The launch page: an exact member path inside the zip.
    entry: Mapped[str] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(Text, nullable=True)
    member_count: Mapped[int] = mapped_column(Integer)
    extracted_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ExtractedTree(Base):
    """A package's members unpacked in a cache location: derived data, never a copy.

    A tree can always be rebuilt from any present copy of its zip, so it counts for
    nothing in the safety rules; the cache evicts trees by least recent access.
    """

    __tablename__ = "extracted_trees"
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id"), primary_key=True)
    location_id: Mapped[int] = mapped_column(ForeignKey("locations.id"), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_access: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


USER_ROLES = ("admin", "operator", "member")


#: Ids of tenants, users and API tokens are never reused (SQLite would otherwise hand a
#: hard-deleted row's id to the next row): a leftover reference to an old id must never
#: name a new account. PostgreSQL's sequences never reuse values anyway.
_NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


class Tenant(Base):
    __tablename__ = "tenants"
    __table_args__ = _NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Soft deletion: the tenant's users can no longer sign in or use a session.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role IN ('admin', 'operator', 'member')", name="user_role"),
        Index("ix_users_tenant", "tenant_id"),
        _NEVER_REUSE_IDS,
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    #: argon2id hash (PHC string); the password itself is never stored.
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Soft deletion; a hard deletion removes the row.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @property
    def active(self) -> bool:
        return self.disabled_at is None and self.deleted_at is None


class ApiToken(Base):
    """A bearer token for API clients, stored as the SHA-256 of the token."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_user", "user_id"), _NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PackageAttempt(Base):
    """One viewer's SCORM attempt at one package key of a namespace (any label): the
    runtime data the content committed, restored on the next launch."""

    __tablename__ = "package_attempts"
    __table_args__ = (
        UniqueConstraint("user_id", "namespace_id", "key", name="uq_attempts_viewer_key"),
        Index("ix_attempts_package", "namespace_id", "key"),
        CheckConstraint("version IN ('scorm12', 'scorm2004')", name="attempt_version"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id"))
    key: Mapped[str] = mapped_column(String(1000))
    version: Mapped[str] = mapped_column(String(20))
    #: 1.2 ``cmi.core.lesson_status``; 2004 ``cmi.completion_status``.
    completion_status: Mapped[str | None] = mapped_column(String(20), nullable=True)
    #: 2004 ``cmi.success_status``; 1.2: passed/failed of the lesson status.
    success_status: Mapped[str | None] = mapped_column(String(20), nullable=True)
    score_raw: Mapped[float | None] = mapped_column(Float, nullable=True)
    score_max: Mapped[float | None] = mapped_column(Float, nullable=True)
    score_scaled: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: Seconds over every session.
    total_time: Mapped[float] = mapped_column(Float, default=0.0)
    #: Every stored data model element, as JSON (``packages.scorm``).
    data: Mapped[str] = mapped_column(Text)
    commits: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Worker(Base):
    """A worker or server process, as it last reported itself: who runs which sites with
    which configuration (``safekeeper status``; a stale heartbeat is a dead or wedged
    process)."""

    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    role: Mapped[str] = mapped_column(String(20))
    sites: Mapped[str] = mapped_column(Text)  # comma-separated
    config_fingerprint: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(50))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
