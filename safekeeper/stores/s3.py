"""A store in an S3-compatible bucket via obstore: ``s3://bucket/prefix``.

Keys live directly under the prefix (``s3://b/p`` keeps key ``k`` at ``p/k``).
Options default from the environment: ``AWS_ENDPOINT_URL``, ``AWS_REGION`` or
``AWS_DEFAULT_REGION`` (else us-east-1), ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``; anything else obstore reads itself (session tokens,
profiles). Requests are path-style so loopback servers (moto, SeaweedFS) work.

Create-only writes. obstore's ``put(mode="create")`` sends ``If-None-Match: *`` and
the server refuses to replace an existing object (412 becomes AlreadyExists). AWS S3,
moto and SeaweedFS all honour it (checked against moto 5.2 and SeaweedFS 4.48).
But obstore sends a conditional put as one request with the whole body in memory,
so only objects up to ``single_put_max`` (64 MiB) go that way. Larger objects
stream as a multipart upload after a HEAD check; obstore cannot make the multipart
completion conditional, so there create-only is best effort: a writer that creates
the key between our HEAD and our completion is overwritten (each reader still sees
one writer's complete object, as completion is atomic). Safekeeper writes large
objects under their SHA-256, where racing writers carry identical bytes.

The identity marker is the object ``.safekeeper-store`` under the prefix; listings
skip it (no key starts with a dot).

A multipart upload that fails is aborted (obstore's abort, then ours via
``stores.s3_uploads`` in case that one failed); a killed process's upload is left
for ``abort_stale_uploads`` (``safekeeper verify``).

Reads of large objects go in ``read_window`` ranges pinned to the first ETag, so no
single request outlives the client timeout and a replaced object is noticed.
"""

from __future__ import annotations

import itertools
import os
import re
import stat
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import obstore
import obstore.exceptions as obe
import obstore.store

from safekeeper.errors import (
    AlreadyExists,
    BadInput,
    NotFound,
    PermanentStoreError,
    SafekeeperError,
)
from safekeeper.stores.base import (
    CHUNK_SIZE,
    HashingCounter,
    ObjectInfo,
    PutResult,
    Source,
    SpooledStaged,
    Staged,
    Usage,
    iter_source,
    write_hashed,
)
from safekeeper.stores.layouts import validate_key, validate_prefix
from safekeeper.stores.marker import MARKER_NAME
from safekeeper.stores.s3_errors import map_error, status_code, write_error
from safekeeper.stores.s3_uploads import MultipartUploads, PendingUpload, UploadAccess

if TYPE_CHECKING:  # obstore's TypedDicts exist only in its stubs
    from obstore import GetOptions, ObjectMeta
    from obstore.store import ClientConfig, S3Config

MIB = 1024 * 1024
DEFAULT_SINGLE_PUT_MAX = 64 * MIB
DEFAULT_PART_SIZE = 16 * MIB  # x 10,000 parts: streams of unknown size up to 156 GiB
MIN_PART_SIZE = 5 * MIB  # S3's floor for every part but the last
MAX_PARTS = 10_000
UPLOAD_CONCURRENCY = 4  # parts in flight, each held in memory
DEFAULT_READ_WINDOW = 256 * MIB
DELETE_BATCH = 1000
UPLOAD_CLOCK_SLACK = timedelta(minutes=5)  # DeleteObjects takes at most 1000 keys
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def part_size_for(size: int | None, minimum: int = DEFAULT_PART_SIZE) -> int:
    """A part size that fits ``size`` bytes in S3's 10,000 parts (whole MiB)."""
    if size is None:
        return minimum
    needed = -(-size // MAX_PARTS)  # ceiling division
    return max(minimum, -(-needed // MIB) * MIB)


class S3Store:
    """Objects under one prefix of one bucket."""

    def __init__(
        self,
        client: obstore.store.S3Store,
        url: str,
        *,
        spool_dir: str | None = None,
        single_put_max: int = DEFAULT_SINGLE_PUT_MAX,
        part_size: int = DEFAULT_PART_SIZE,
        read_window: int = DEFAULT_READ_WINDOW,
        uploads: MultipartUploads | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise BadInput(f"part_size must be at least {MIN_PART_SIZE} bytes")
        if single_put_max < 0 or read_window < 1:
            raise BadInput("single_put_max and read_window must be positive")
        self.client = client
        self.url = url
        self.spool_dir = spool_dir
        self.single_put_max = single_put_max
        self.part_size = part_size
        self.read_window = read_window
        #: Lists and aborts incomplete multipart uploads (None: this store cannot).
        self.uploads = uploads

    @classmethod
    def from_url(
        cls,
        /,
        url: str,
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        allow_http: bool | None = None,
        *,
        spool_dir: str | None = None,
        single_put_max: int = DEFAULT_SINGLE_PUT_MAX,
        part_size: int = DEFAULT_PART_SIZE,
        read_window: int = DEFAULT_READ_WINDOW,
        **unknown: object,
    ) -> S3Store:
        if unknown:
            raise BadInput(f"unknown s3 store option(s): {', '.join(sorted(unknown))}")
        parts = urlsplit(url)
        # Never echo the URL itself: it might carry a secret.
        if parts.scheme.lower() != "s3":
            raise BadInput("not an s3:// URL")
        if "@" in parts.netloc or parts.query or parts.fragment:
            raise BadInput(
                "s3 URL must be s3://bucket/prefix; give credentials as options or "
                "in the AWS_* environment, never in the URL"
            )
        bucket, prefix = parts.netloc, parts.path.strip("/")
        if not _BUCKET_RE.fullmatch(bucket):
            raise BadInput(f"bad S3 bucket name {bucket!r}")
        if prefix and any(seg in ("", ".", "..") for seg in prefix.split("/")):
            raise BadInput(f"bad S3 prefix {prefix!r}")
        env = os.environ
        endpoint = endpoint or env.get("AWS_ENDPOINT_URL") or None
        region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        if allow_http is None:
            allow_http = bool(endpoint and endpoint.startswith("http://"))
        config: S3Config = {"region": region, "virtual_hosted_style_request": False}
        if endpoint:
            config["endpoint"] = endpoint
        access_key_id = access_key_id or env.get("AWS_ACCESS_KEY_ID")
        secret_access_key = secret_access_key or env.get("AWS_SECRET_ACCESS_KEY")
        if access_key_id and secret_access_key:
            config["access_key_id"] = access_key_id
            config["secret_access_key"] = secret_access_key
        client_options: ClientConfig = {
            "allow_http": allow_http,
            # Whole-request limit; reads are windowed and parts bounded, so this
            # only trips on a stalled connection.
            "timeout": timedelta(minutes=10),
            "connect_timeout": timedelta(seconds=10),
        }
        try:
            client = obstore.store.S3Store(
                bucket, prefix=prefix or None, config=config, client_options=client_options
            )
        except Exception as exc:  # obstore raises several kinds for bad config
            raise map_error(exc, "cannot configure S3 store") from exc
        clean_url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        access = UploadAccess(bucket, prefix, endpoint, region, access_key_id, secret_access_key)
        return cls(
            client,
            clean_url,
            spool_dir=spool_dir,
            single_put_max=single_put_max,
            part_size=part_size,
            read_window=read_window,
            uploads=MultipartUploads(access),
        )

    # -- writing -------------------------------------------------------------

    def _put_small(self, key: str, chunks: list[bytes], *, create: bool = True) -> None:
        try:
            obstore.put(self.client, key, chunks or b"", mode="create" if create else "overwrite")
        except obe.AlreadyExistsError as exc:
            # obstore retries a put whose response was lost; if the first attempt
            # landed, the retry sees it here as AlreadyExists.
            raise AlreadyExists(f"{self.url}: object {key!r} already exists") from exc
        except Exception as exc:
            raise write_error(exc, f"{self.url}: cannot put {key!r}") from exc

    def _put_multipart(
        self, key: str, payload: Iterable[bytes] | Path, part_size: int, *, create: bool = True
    ) -> None:
        # Best-effort create-only, see the module docstring for the race.
        if create and self.exists(key):
            raise AlreadyExists(f"{self.url}: object {key!r} already exists")
        started = datetime.now(UTC)
        try:
            if isinstance(payload, Path):
                obstore.put(
                    self.client,
                    key,
                    payload,
                    use_multipart=True,
                    chunk_size=part_size,
                    max_concurrency=UPLOAD_CONCURRENCY,
                )
            else:
                # Chunks are pushed from this thread, never pulled by obstore's runtime:
                # they may come from another obstore stream (S3 → S3), and obstore cannot
                # run inside its own runtime (it panics). Leaving the block on an
                # exception (the source's, or a task being cancelled) aborts the upload.
                with obstore.open_writer(
                    self.client, key, buffer_size=part_size, max_concurrency=UPLOAD_CONCURRENCY
                ) as writer:
                    for chunk in payload:
                        writer.write(chunk)
        except BaseException as exc:
            # obstore aborts on an error while writing, but not when completing fails
            # (the last part or CompleteMultipartUpload), nor when its abort fails:
            # make sure nothing of this attempt stays behind.
            self._abort_failed(key, started)
            if isinstance(exc, SafekeeperError) or not isinstance(exc, Exception):
                raise  # the source's error passed back through obstore, or a cancel
            raise write_error(exc, f"{self.url}: cannot put {key!r}") from exc

    def _abort_failed(self, key: str, started: datetime) -> None:
        if self.uploads is not None:
            # Slack for the server's clock being behind ours. A racing writer of the
            # same key (same bytes, see above) may lose its upload too: it fails and
            # is retried, which is harmless.
            self.uploads.abort_since(key, started - UPLOAD_CLOCK_SLACK)

    def abort_stale_uploads(self, older_than: timedelta) -> list[PendingUpload]:
        """Abort the incomplete multipart uploads initiated more than ``older_than``
        ago (leftovers of killed writers); return them."""
        if self.uploads is None:
            return []
        return self.uploads.abort_stale(older_than, datetime.now(UTC))

    def put(self, key: str, source: Source) -> PutResult:
        return self._write(key, source, create=True)

    def replace(self, key: str, source: Source) -> PutResult:
        """An unconditional PUT (multipart for large objects): atomic on S3, readers see
        the old object or the new one."""
        return self._write(key, source, create=False)

    def _write(self, key: str, source: Source, *, create: bool) -> PutResult:
        validate_key(key)
        size_hint = _size_hint(source)
        counter = HashingCounter()
        chunks = iter_source(source)
        head: deque[bytes] = deque()
        for chunk in chunks:
            counter.update(chunk)
            head.append(chunk)
            if counter.size > self.single_put_max:
                break
        else:
            self._put_small(key, list(head), create=create)
            return PutResult(size=counter.size, sha256=counter.sha256)

        def stream() -> Iterator[bytes]:
            while head:
                yield head.popleft()  # release the buffered head as it is sent
            for chunk in chunks:
                counter.update(chunk)
                yield chunk

        self._put_multipart(key, stream(), part_size_for(size_hint, self.part_size), create=create)
        return PutResult(size=counter.size, sha256=counter.sha256)

    def _publish_spool(self, path: Path, key: str) -> None:
        self._put_file(key, path, path.stat().st_size)

    def _replace_spool(self, path: Path, key: str) -> None:
        self._put_file(key, path, path.stat().st_size, create=False)

    def _put_file(self, key: str, path: Path, size: int, *, create: bool = True) -> None:
        validate_key(key)
        if size <= self.single_put_max:
            self._put_small(key, [path.read_bytes()], create=create)
        else:
            self._put_multipart(key, path, part_size_for(size, self.part_size), create=create)

    def stage(self, source: Source) -> Staged:
        try:
            fd, name = tempfile.mkstemp(prefix="safekeeper-", suffix=".spool", dir=self.spool_dir)
        except OSError as exc:
            raise PermanentStoreError(f"cannot create spool file: {exc}") from exc
        try:
            try:
                size, sha256 = write_hashed(source, fd)
            finally:
                os.close(fd)
        except BaseException:
            os.unlink(name)
            raise
        return SpooledStaged(Path(name), size, sha256, self._publish_spool, self._replace_spool)

    # -- reading -------------------------------------------------------------

    def _head(self, key: str) -> ObjectMeta:
        validate_key(key)
        try:
            meta = obstore.head(self.client, key)
        except Exception as exc:
            raise map_error(exc, f"{self.url}: cannot stat {key!r}") from exc
        return meta

    def open(self, key: str) -> Iterator[bytes]:
        meta = self._head(key)  # NotFound now, not on the first next()
        return self._stream(key, int(meta["size"]), meta.get("e_tag"))

    def _stream(self, key: str, size: int, etag: str | None) -> Iterator[bytes]:
        for start in range(0, size, self.read_window):
            options: GetOptions = {"range": (start, min(size, start + self.read_window))}
            if etag:
                options["if_match"] = etag
            try:
                result = obstore.get(self.client, key, options=options)
                yield from result.stream(min_chunk_size=CHUNK_SIZE)
            except Exception as exc:
                raise map_error(exc, f"{self.url}: cannot read {key!r}") from exc

    def read_range(self, key: str, start: int, length: int) -> bytes:
        validate_key(key)
        if start < 0 or length < 0:
            raise BadInput(f"bad range: start={start} length={length}")
        if length == 0:
            self._head(key)  # still NotFound for a missing key
            return b""
        try:
            return bytes(obstore.get_range(self.client, key, start=start, length=length))
        except obe.GenericError as exc:
            # 416: the range starts at or past the end of an object that exists.
            if status_code(exc) == "416":
                return b""
            raise map_error(exc, f"{self.url}: cannot read {key!r}") from exc
        except Exception as exc:
            raise map_error(exc, f"{self.url}: cannot read {key!r}") from exc

    def stat(self, key: str) -> ObjectInfo:
        meta = self._head(key)
        size = int(meta["size"])
        # Every PUT gives the object a new ETag (and version, on versioned buckets); a
        # PUT of the same bytes may keep the ETag, which is harmless.
        fingerprint = f"s3:{size}:{meta.get('e_tag')}:{meta.get('version')}"
        return ObjectInfo(
            key=key, size=size, modified=meta.get("last_modified"), fingerprint=fingerprint
        )

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except NotFound:
            return False
        return True

    def delete(self, keys: Iterable[str]) -> None:
        it = iter(keys)
        while batch := [validate_key(key) for key in itertools.islice(it, DELETE_BATCH)]:
            try:
                obstore.delete(self.client, batch)  # S3 reports no error for missing keys
            except FileNotFoundError:
                continue
            except Exception as exc:
                raise map_error(exc, f"{self.url}: cannot delete") from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)  # BadInput now, not on the first next()
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        # obstore matches prefixes by whole path segment, and keys are partial
        # segments, so start the listing just before the prefix instead (S3's
        # start-after) and stop once the sorted listing has passed it.
        offset = prefix[:-1] or None
        try:
            for batch in obstore.list(self.client, offset=offset, chunk_size=1000):
                for meta in batch:
                    key = meta["path"]
                    if not key.startswith(prefix):
                        if prefix and key > prefix:
                            return
                        continue
                    if "/" in key or key.startswith("."):
                        continue  # deeper than our keys, or the marker: not an object
                    yield ObjectInfo(key=key, size=meta["size"], modified=meta["last_modified"])
        except Exception as exc:
            raise map_error(exc, f"{self.url}: cannot list") from exc

    def usage(self) -> Usage:
        used = count = 0
        for info in self._list(""):
            used += info.size
            count += 1
        return Usage(used_bytes=used, object_count=count)

    # -- identity ------------------------------------------------------------

    def read_marker(self) -> bytes | None:
        try:
            return bytes(obstore.get(self.client, MARKER_NAME).bytes())
        except Exception as exc:
            error = map_error(exc, f"{self.url}: cannot read {MARKER_NAME}")
            if isinstance(error, NotFound):
                return None
            raise error from exc

    def initialize(self, marker: bytes) -> None:
        """Write the marker create-only (a bucket is created by its owner, not here)."""
        try:
            obstore.put(self.client, MARKER_NAME, marker, mode="create")
        except obe.AlreadyExistsError as exc:
            raise AlreadyExists(f"{self.url}: the store already has a marker") from exc
        except Exception as exc:
            raise write_error(exc, f"{self.url}: cannot write {MARKER_NAME}") from exc

    def close(self) -> None:
        """Nothing to release: obstore pools connections per client object."""


def _size_hint(source: Source) -> int | None:
    """Bytes left in a regular-file source, to size multipart parts; else None."""
    try:
        fileno = source.fileno()  # type: ignore[union-attr]
        st = os.fstat(fileno)
        if not stat.S_ISREG(st.st_mode):
            return None
        return int(st.st_size - source.tell())  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):
        return None
