"""The error hierarchy every layer raises.

Callers catch by meaning, not by module: the CLI maps each class to a message and an
exit code, the HTTP API to a status and a JSON ``code``.
"""

from __future__ import annotations


class SafekeeperError(Exception):
    """Base of every error safekeeper raises on purpose."""

    code = "error"


class BadInput(SafekeeperError):
    """The caller asked for something malformed (a bad id, path, flag or value)."""

    code = "bad_input"


class ConfigError(BadInput):
    """The configuration is invalid; the message names the file and the key."""

    code = "bad_config"


class NotFound(SafekeeperError):
    """A blob, reference, location or stored object does not exist."""

    code = "not_found"


class AlreadyExists(SafekeeperError):
    """A create-only write found the key already taken."""

    code = "already_exists"


class Conflict(SafekeeperError):
    """The state changed underneath the operation (lost a conditional update)."""

    code = "conflict"


class Interrupted(SafekeeperError):
    """The user asked to stop (Ctrl-C); what was finished is recorded, nothing half-way."""

    code = "interrupted"


class Cancelled(SafekeeperError):
    """A task was cancelled (``safekeeper tasks cancel``) while it ran: its work stops."""

    code = "cancelled"


class PolicyDenied(SafekeeperError):
    """A safety rule forbids the operation."""

    code = "policy_denied"


class StoreError(SafekeeperError):
    """A store backend failed."""

    code = "store_error"


class TransientStoreError(StoreError):
    """A store failure worth retrying (timeouts, throttling, connection resets)."""

    code = "store_transient"


class PermanentStoreError(StoreError):
    """A store failure that retrying will not fix (permissions, bad bucket, corrupt data)."""

    code = "store_permanent"


class StoreIdentityError(TransientStoreError):
    """A location's store is not the store the catalog recorded for it: its identity
    marker is missing (a disk not mounted?), different (a changed path?) or shared with
    another location. Nothing is written to, deleted from or counted in such a store;
    it is transient because mounting the right disk (or fixing the path) cures it."""

    code = "store_identity"


class PackageRejected(BadInput):
    """A zip package failed validation; ``code`` says which check, ``member`` which entry."""

    code = "package_rejected"

    def __init__(self, code: str, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.member = member


class TooLarge(BadInput):
    """An upload or request body exceeds a configured limit (HTTP 413)."""

    code = "too_large"
    status = 413


class UnsupportedMediaType(BadInput):
    """A request body of a content type the route does not take (HTTP 415)."""

    code = "unsupported_media_type"
    status = 415


class Unauthenticated(SafekeeperError):
    """No valid credentials (HTTP 401). ``code``: ``unauthenticated``, ``bad_credentials``,
    ``session_revoked`` or ``session_expired``."""

    code = "unauthenticated"
    status = 401

    def __init__(self, message: str, code: str = "unauthenticated") -> None:
        super().__init__(message)
        self.code = code


class Forbidden(SafekeeperError):
    """Signed in, but the role does not allow this (HTTP 403). Never used to hide another
    tenant's things: those are NotFound."""

    code = "forbidden"
    status = 403


class NamespaceReserved(Forbidden):
    """A tenant user asked for a new namespace outside their tenant's names (HTTP 403):
    only an admin creates those. ``allowed_prefix`` is what the names they may create
    begin with (None: none, their tenant's name predates the rule)."""

    code = "namespace_reserved"

    def __init__(self, message: str, allowed_prefix: str | None) -> None:
        super().__init__(message)
        self.allowed_prefix = allowed_prefix


class RateLimited(SafekeeperError):
    """Too many attempts (HTTP 429); ``retry_after`` seconds until the next is allowed."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (drivers and obstore add context lines)."""
    return str(exc).strip().split("\n", 1)[0]
