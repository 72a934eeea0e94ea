"""What an obstore exception means, as a safekeeper error (``stores.s3``).

The distinction that matters downstream: ``NotFound`` (the object is not there — and
only that), ``AlreadyExists`` (a create-only write found the key taken),
``PermanentStoreError`` (retrying will not help: credentials, a missing bucket, a 4xx)
and ``TransientStoreError`` (retry later; obstore has already retried 5xx, throttling
and timeouts itself).
"""

from __future__ import annotations

import re

import obstore.exceptions as obe

from safekeeper.errors import (
    AlreadyExists,
    BadInput,
    NotFound,
    PermanentStoreError,
    SafekeeperError,
    TransientStoreError,
    first_line,
)

_STATUS_RE = re.compile(r"status code: (\d{3})")
_INSTANCE_METADATA = "169.254.169.254"


def map_error(exc: Exception, what: str) -> SafekeeperError:
    """Translate an obstore exception into the safekeeper error it means."""
    message = f"{what}: {first_line(exc)}"
    if _INSTANCE_METADATA in str(exc):
        # With no credentials configured, obstore asks the cloud's instance-metadata
        # service; off a cloud VM that fails with an error about that address instead.
        return PermanentStoreError(
            f"{what}: no credentials for the bucket: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY in this process's environment (or the location's "
            "access_key_id / secret_access_key)"
        )
    if isinstance(exc, FileNotFoundError):  # obstore raises the builtin for NotFound
        if "NoSuchBucket" in str(exc):
            return PermanentStoreError(message)
        return NotFound(message)
    if isinstance(exc, obe.AlreadyExistsError):
        return AlreadyExists(message)
    if isinstance(exc, obe.PreconditionError):
        return TransientStoreError(f"{message} (the object changed underneath us)")
    if isinstance(
        exc,
        obe.PermissionDeniedError
        | obe.UnauthenticatedError
        | obe.NotSupportedError
        | obe.InvalidPathError
        | obe.UnknownConfigurationKeyError,
    ):
        return PermanentStoreError(message)
    if isinstance(exc, obe.GenericError):
        # obstore has already retried 5xx, throttling and timeouts; a 4xx left here is
        # a request the server will keep refusing (NoSuchBucket, InvalidRequest, ...).
        status = status_code(exc)
        if status and status.startswith("4") and status not in ("408", "429"):
            return PermanentStoreError(message)
        return TransientStoreError(message)
    if isinstance(exc, ValueError | TypeError):
        return BadInput(message)
    return TransientStoreError(message)


def write_error(exc: Exception, what: str) -> SafekeeperError:
    """``map_error`` for a write."""
    error = map_error(exc, what)
    # A 404 on a write means the bucket (not the object) is missing.
    return PermanentStoreError(str(error)) if isinstance(error, NotFound) else error


def status_code(exc: Exception) -> str | None:
    """The HTTP status an obstore error reports in its message, if any."""
    match = _STATUS_RE.search(str(exc))
    return match.group(1) if match else None
