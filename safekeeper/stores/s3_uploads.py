"""Incomplete multipart uploads under an S3 store's prefix: list and abort them.

An incomplete upload is invisible (no key shows it) but its parts are stored, and
billed, until someone aborts it. obstore aborts the uploads it sees fail, but a
process killed mid-upload leaves its upload behind, and obstore cannot list uploads
(S3's ListMultipartUploads). boto3 can, so it is used here and only here, with the
endpoint, region and credentials the store itself uses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from safekeeper.errors import PermanentStoreError, TransientStoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingUpload:
    """One incomplete multipart upload; ``key`` is relative to the store's prefix."""

    key: str
    upload_id: str
    initiated: datetime
    #: Bytes in the parts uploaded so far.
    size: int


@dataclass(frozen=True)
class UploadAccess:
    """How to reach the bucket: the same settings the store's obstore client has."""

    bucket: str
    prefix: str
    endpoint: str | None
    region: str
    access_key_id: str | None
    secret_access_key: str | None


class MultipartUploads:
    """List and abort the incomplete multipart uploads under one bucket prefix."""

    def __init__(self, access: UploadAccess) -> None:
        self.access = access
        self._client: Any = None

    def _s3(self) -> Any:
        if self._client is None:
            # Imported here: only cleanup needs it, and it takes a while to import.
            import boto3  # type: ignore[import-untyped]
            from botocore.config import Config  # type: ignore[import-untyped]

            access = self.access
            keys: dict[str, str] = {}
            if access.access_key_id and access.secret_access_key:
                keys = {
                    "aws_access_key_id": access.access_key_id,
                    "aws_secret_access_key": access.secret_access_key,
                }
            self._client = boto3.client(
                "s3",
                endpoint_url=access.endpoint,
                region_name=access.region,
                # Short timeouts: this also runs right after a failed write, whose
                # error is the one to report, not delayed by minutes of retries.
                config=Config(
                    s3={"addressing_style": "path"},
                    retries={"mode": "standard", "total_max_attempts": 3},
                    connect_timeout=10,
                    read_timeout=60,
                ),
                **keys,
            )
        return self._client

    def _full(self, key: str) -> str:
        return f"{self.access.prefix}/{key}" if self.access.prefix else key

    def _relative(self, full: str) -> str | None:
        prefix = self.access.prefix
        if not prefix:
            return full
        return full[len(prefix) + 1 :] if full.startswith(prefix + "/") else None

    def pending(self, key: str = "", *, sizes: bool = True) -> Iterator[PendingUpload]:
        """Every incomplete upload whose key starts with ``key`` (all of them for "");
        with ``sizes``, the bytes of its parts (one more request per upload), else 0."""
        request = {"Bucket": self.access.bucket, "Prefix": self._full(key)}
        while True:
            page = self._call("list multipart uploads", "list_multipart_uploads", **request)
            for item in page.get("Uploads") or []:
                relative = self._relative(item["Key"])
                if relative is None:
                    continue
                yield PendingUpload(
                    relative,
                    item["UploadId"],
                    item["Initiated"],
                    self._uploaded_bytes(item["Key"], item["UploadId"]) if sizes else 0,
                )
            if not page.get("IsTruncated"):
                return
            request["KeyMarker"] = page.get("NextKeyMarker", "")
            request["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    def _uploaded_bytes(self, full: str, upload_id: str) -> int:
        total = 0
        request: dict[str, Any] = {"Bucket": self.access.bucket, "Key": full, "UploadId": upload_id}
        while True:
            try:
                page = self._call("list parts", "list_parts", **request)
            except PermanentStoreError:
                return total  # aborted or completed meanwhile: nothing left to count
            total += sum(int(part.get("Size", 0)) for part in page.get("Parts") or [])
            if not page.get("IsTruncated"):
                return total
            request["PartNumberMarker"] = page["NextPartNumberMarker"]

    def abort(self, upload: PendingUpload) -> None:
        """Abort one upload; one that is already gone is not an error."""
        try:
            self._call(
                f"abort upload of {upload.key!r}",
                "abort_multipart_upload",
                Bucket=self.access.bucket,
                Key=self._full(upload.key),
                UploadId=upload.upload_id,
            )
        except PermanentStoreError as exc:
            if "NoSuchUpload" not in str(exc):
                raise

    def abort_stale(self, older_than: timedelta, now: datetime) -> list[PendingUpload]:
        """Abort every upload initiated before ``now - older_than``; return them.

        Uploads younger than that may belong to a writer still running, and are kept.
        """
        cutoff = now - older_than
        stale = [upload for upload in self.pending() if upload.initiated <= cutoff]
        for upload in stale:
            self.abort(upload)
        return stale

    def abort_since(self, key: str, since: datetime) -> int:
        """Best effort, after a failed write: abort the uploads of exactly ``key``
        initiated at or after ``since``. Never raises; returns how many were aborted."""
        aborted = 0
        try:
            for upload in self.pending(key, sizes=False):
                if upload.key == key and upload.initiated >= since:
                    self.abort(upload)
                    aborted += 1
        except (TransientStoreError, PermanentStoreError) as exc:
            # The failed write's error is the one to report; what is left here is
            # swept by ``safekeeper verify`` once it is old enough.
            log.warning("could not abort the failed upload of %r: %s", key, exc)
        return aborted

    def _call(self, what: str, method: str, **request: Any) -> Any:
        from botocore.exceptions import (  # type: ignore[import-untyped]
            BotoCoreError,
            ClientError,
        )

        location = f"s3://{self.access.bucket}/{self.access.prefix}".rstrip("/")
        try:
            return getattr(self._s3(), method)(**request)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            message = f"{location}: cannot {what}: {error.get('Code')} {error.get('Message')}"
            if 400 <= status < 500 and status not in (408, 429):
                raise PermanentStoreError(message) from exc
            raise TransientStoreError(message) from exc
        except BotoCoreError as exc:  # connection refused, timeouts, bad endpoint
            raise TransientStoreError(f"{location}: cannot {what}: {exc}") from exc
