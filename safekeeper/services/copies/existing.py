"""An object already at the key a copy is about to be written to (invariant 11).

Writes are create-only, so a write that finds its key taken learns only that
*something* is there: the leftover of a put that died before its commit (the right
bytes), a corrupt copy being put again, a file someone restored by hand, or — at an
``interval`` key after a database restore — another blob's bytes. Its name and size
prove nothing. So the object is hashed, and only then:

- right bytes (SHA-256 and size): it counts as the copy; nothing is written;
- wrong bytes at a content-addressed key, or at an interval key this blob's copy
  occupied before (a copy row there was verified once: a repair): the good bytes are
  written over it with ``replace`` — atomically, the key never empty — and read back
  and hashed again before the copy may become ``present``;
- wrong bytes at an interval key the blob never had: someone else's bytes (the
  counter was rewound by a database restore). Never overwritten: ``ForeignObject``.

Only the slow path pays: a write whose key was free never reads anything back.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from safekeeper.engine import watchdog
from safekeeper.errors import Conflict, TransientStoreError
from safekeeper.stores.base import HashingCounter, Store


class ForeignObject(Conflict):
    """An interval key holds another blob's bytes; it was not overwritten."""

    code = "foreign_object"


class Action(enum.StrEnum):
    KEEP = "keep"
    REPLACE = "replace"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Content:
    sha256: str
    size: int


def judge(found: Content, wanted: Content, *, content_key: bool, held_before: bool) -> Action:
    """What to do with ``found`` at the key where ``wanted`` belongs (pure).

    ``content_key``: the key is the blob's SHA-256, so no other blob's bytes can belong
    there. ``held_before``: a copy of this blob at this location was verified once, so
    the key was this blob's (interval keys are never handed out twice).
    """
    if found == wanted:
        return Action.KEEP
    if content_key or held_before:
        return Action.REPLACE
    return Action.REFUSE


def hash_object(store: Store, key: str) -> tuple[str, int]:
    counter = HashingCounter()
    for chunk in watchdog.tracked(store.open(key)):  # progress, when a task hashes
        counter.update(chunk)
    return counter.sha256, counter.size


def settle(
    store: Store,
    key: str,
    wanted: Content,
    *,
    content_key: bool,
    held_before: Callable[[], bool],
    replace: Callable[[], None],
) -> bool:
    """Make the object already at ``key`` hold ``wanted``'s bytes, or raise.

    False: it already did (kept, nothing written). True: ``replace`` wrote the good
    bytes over wrong ones, and reading them back hashes right. NotFound if the object
    vanished meanwhile; ForeignObject (REFUSE); TransientStoreError if the replaced
    object does not read back right (someone wrote it meanwhile: retry).
    """
    found = Content(*hash_object(store, key))
    action = judge(found, wanted, content_key=content_key, held_before=False)
    if action is Action.REFUSE and held_before():
        action = Action.REPLACE
    if action is Action.KEEP:
        return False
    if action is Action.REFUSE:
        raise ForeignObject(
            f"{store.url}: object {key!r} holds other bytes ({found.size} bytes hashing to "
            f"{found.sha256}), not blob {wanted.sha256}; it was not overwritten. Its key "
            "was handed out again, which happens after the database was restored from an "
            "older backup: `safekeeper verify --adopt` lists such objects"
        )
    replace()
    back = Content(*hash_object(store, key))
    if back != wanted:
        raise TransientStoreError(
            f"{store.url}: object {key!r} reads back as {back.size} bytes hashing to "
            f"{back.sha256} after writing blob {wanted.sha256}; retry"
        )
    return True
