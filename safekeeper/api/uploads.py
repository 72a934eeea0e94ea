"""Request bodies streamed into a synchronous consumer, within ``server.max_upload_size``.

The services take an iterable of byte chunks and block (disk, database), so they run in
a worker thread; that thread pulls the request's chunks one at a time from the event
loop. Nothing is buffered beyond one chunk, and a body that grows past the limit
raises TooLarge inside the consumer's read loop, so the store discards what it staged
and nothing is recorded.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, BinaryIO, TypeVar

import anyio.from_thread
from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.types import Message

from safekeeper.errors import BadInput, TooLarge
from safekeeper.units import format_size

T = TypeVar("T")


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"request body is larger than the upload limit of {format_size(limit)}")


def check_declared_size(request: Request, limit: int) -> None:
    """Refuse a body whose Content-Length already exceeds ``limit``, before reading it."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise BadInput(f"bad Content-Length {declared!r}") from None
    if size > limit:
        raise _too_large(limit)


def check_spooled_size(file: BinaryIO, limit: int) -> None:
    """Refuse a form file (spooled by the multipart parser, within ``read_form``'s
    bound) larger than ``limit`` itself."""
    size = file.seek(0, io.SEEK_END)
    file.seek(0)
    if size > limit:
        raise _too_large(limit)


#: Room for a multipart form's boundaries, part headers and small fields beside its file.
FORM_OVERHEAD = 64 * 1024


async def read_form(request: Request, limit: int) -> FormData:
    """Parse a multipart form whose file may be up to ``limit`` bytes, counting the body
    as it arrives: past the limit (plus ``FORM_OVERHEAD``) it stops with TooLarge
    instead of spooling whatever a client sends. One file, a few fields."""
    allowed = limit + FORM_OVERHEAD
    check_declared_size(request, allowed)
    received = 0
    upstream = request.receive

    async def receive() -> Message:
        nonlocal received
        message = await upstream()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > allowed:
                raise _too_large(limit)
        return message

    counted = Request(request.scope, receive)
    return await counted.form(max_files=1, max_fields=20)


async def consume_body(request: Request, limit: int, consumer: Callable[[Iterator[bytes]], T]) -> T:
    """Run ``consumer`` in a worker thread over the request body's chunks."""
    check_declared_size(request, limit)
    stream: AsyncIterator[bytes] = request.stream().__aiter__()

    async def next_chunk() -> bytes | None:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None

    def chunks() -> Iterator[bytes]:
        received = 0
        while (chunk := anyio.from_thread.run(next_chunk)) is not None:
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            if chunk:
                yield chunk

    return await run_in_threadpool(consumer, chunks())


class ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of chunks, for services that ``read()``."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        target = memoryview(buffer).cast("B")
        count = min(len(target), len(self._pending))
        target[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def reader(chunks: Iterator[bytes]) -> BinaryIO:
    return io.BufferedReader(ChunkReader(chunks), buffer_size=1024 * 1024)
