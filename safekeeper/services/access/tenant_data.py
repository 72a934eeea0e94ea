"""Blobs and references as a signed-in principal may see and change them.

A blob has no tenant of its own (the same bytes are stored once, whoever put them):
a principal sees a blob exactly when a namespace visible to them references it.
Admins see every blob. Operators are scoped like members here — they run the
storage-wide views (locations, plan, gc, audit), but reading content or references
still goes through their tenant's namespaces. Anything else answers NotFound, like a
blob that does not exist, so knowing a hash does not reveal or grant another tenant's
content.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from sqlalchemy import ColumnElement, delete, exists, func, or_, select, true
from sqlalchemy.orm import Session

from safekeeper.api.principal import Principal
from safekeeper.db.copies import copies_of_blob
from safekeeper.db.models import Blob, Hold, Namespace, Reference, Tenant
from safekeeper.db.refs import ReferenceView, list_references, set_by
from safekeeper.db.refs import resolve as resolve_reference
from safekeeper.errors import BadInput, NotFound
from safekeeper.ids import BLOB_ID_LENGTH, RefSpec, is_blob_id, parse_ref
from safekeeper.services.access.tenancy import (
    claim_namespace,
    claim_namespace_created,
    visible_namespace,
    visible_namespace_filter,
)
from safekeeper.services.copies import ingest, inventory, refs
from safekeeper.services.copies.ingest import PutOutcome
from safekeeper.services.operations.audit import AuditView
from safekeeper.services.packaging.bundle_import import ImportOutcome

if TYPE_CHECKING:
    from safekeeper.archive import Archive


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _visible_blob_clause(principal: Principal, *, storage: bool = False) -> ColumnElement[bool]:
    """Which blobs ``principal`` may look up — the one rule for the API and the dashboard.

    ``storage``: a look at storage facts (copies, verdicts, audit), not at content or
    references. Operators then also see blobs that no namespace references at all
    (garbage: the plan lists it), never a blob only other tenants reference.
    """
    if principal.is_admin:
        return true()
    seen = exists().where(
        Reference.blob_id == Blob.id,
        Reference.namespace_id == Namespace.id,
        visible_namespace_filter(principal),
    )
    if storage and principal.is_operator:
        return or_(seen, ~exists().where(Reference.blob_id == Blob.id))
    return seen


def visible_blob(
    session: Session, principal: Principal, sha256: str, *, storage: bool = False
) -> Blob:
    blob = session.scalar(
        select(Blob).where(Blob.sha256 == sha256, _visible_blob_clause(principal, storage=storage))
    )
    if blob is None:
        raise NotFound(f"no blob {sha256}")
    return blob


def resolve_visible_blob(
    archive: Archive, principal: Principal, text: str, *, storage: bool = False
) -> str:
    """A blob id, a unique id prefix (≥ 6 hex) or ``NAMESPACE:KEY[:LABEL]``, resolved
    among the blobs ``principal`` may see: one that exists elsewhere answers exactly like
    one that does not (NotFound with the same message), and a prefix is ambiguous only
    among visible blobs."""
    text = text.strip()
    clause = _visible_blob_clause(principal, storage=storage)
    with archive.db.read() as session:
        if ":" in text:
            spec = parse_ref(text)
            try:
                visible_namespace(session, principal, spec.namespace)
                return resolve_reference(session, spec).sha256
            except NotFound:
                raise NotFound(f"no reference {spec}") from None
        candidate = text.lower()
        if is_blob_id(candidate):
            return visible_blob(session, principal, candidate, storage=storage).sha256
        if 6 <= len(candidate) < BLOB_ID_LENGTH and all(c in "0123456789abcdef" for c in candidate):
            matches = session.scalars(
                select(Blob.sha256).where(Blob.sha256.startswith(candidate), clause).limit(2)
            ).all()
            if not matches:
                raise NotFound(f"no blob starts with {candidate}")
            if len(matches) > 1:
                raise BadInput(f"blob prefix {candidate} is ambiguous; give more characters")
            return matches[0]
    raise BadInput(
        f"{text!r} is neither a blob id (64 hex, or a unique prefix of at least 6) "
        "nor a reference NAMESPACE:KEY[:LABEL]"
    )


@dataclass(frozen=True)
class HoldSummary:
    id: int
    kind: str
    target: str
    reason: str
    created_at: datetime
    created_by: str


@dataclass(frozen=True)
class BlobInfo(inventory.BlobStatus):
    holds: list[HoldSummary]


def _holds_on(session: Session, principal: Principal, blob: Blob) -> list[HoldSummary]:
    """Active holds keeping the blob: on itself, or on a visible namespace referencing it."""
    referencing = select(Reference.namespace_id).where(Reference.blob_id == blob.id)
    rows = session.execute(
        select(Hold, Namespace.name)
        .outerjoin(Namespace, Hold.namespace_id == Namespace.id)
        .where(
            Hold.released_at.is_(None),
            or_(
                Hold.blob_id == blob.id,
                Hold.namespace_id.in_(referencing) & visible_namespace_filter(principal),
            ),
        )
        .order_by(Hold.id)
    )
    return [
        HoldSummary(
            hold.id,
            "namespace" if name is not None else "blob",
            name if name is not None else blob.sha256,
            hold.reason,
            hold.created_at,
            hold.created_by,
        )
        for hold, name in rows
    ]


def _from_tenants_view(
    principal: Principal, info: BlobInfo, references: list[ReferenceView]
) -> BlobInfo:
    """The blob as the principal's tenant knows it: it came into being when the tenant
    first referenced it, and nothing of its copies' history before that moment shows
    (the same bytes may have been stored long before, by someone else: telling when
    would say that they were)."""
    if principal.is_admin or not references:
        return info
    first = min(reference.updated_at for reference in references)

    def since(moment: datetime | None) -> datetime | None:
        return moment if moment is not None and moment >= first else None

    copies = [
        replace(
            copy,
            created_at=max(copy.created_at, first),
            verified_at=since(copy.verified_at),
            last_access=since(copy.last_access),
        )
        for copy in info.copies
    ]
    return replace(info, created_at=first, copies=copies)


def import_outcome_for(principal: Principal, outcome: ImportOutcome) -> ImportOutcome:
    """What an import tells the principal: for tenant users every blob of the bundle
    counts as stored, so the answer never says that the archive already held some
    bytes (another tenant's, perhaps). Admins get the storage facts."""
    if principal.is_admin:
        return outcome
    return replace(
        outcome, blobs_stored=outcome.blobs_stored + outcome.blobs_skipped, blobs_skipped=0
    )


def blob_info(archive: Archive, principal: Principal, sha256: str) -> BlobInfo:
    """Storage facts of a blob (the API's blob info and the dashboard's blob page):
    references and holds only in namespaces ``principal`` may see, times only from
    when its tenant first referenced it."""
    with archive.db.read() as session:
        blob = visible_blob(session, principal, sha256, storage=True)
        visible = {
            name
            for (name,) in session.execute(
                select(Namespace.name).where(visible_namespace_filter(principal))
            )
        }
        references = [
            r for r in list_references(session, blob_id=blob.id) if r.namespace in visible
        ]
        info = BlobInfo(
            sha256=blob.sha256,
            size=blob.size,
            created_at=blob.created_at,
            unreferenced_since=blob.unreferenced_since,
            copies=copies_of_blob(session, blob.id),
            references=references,
            holds=_holds_on(session, principal, blob),
        )
    return _from_tenants_view(principal, info, references)


def open_visible_blob(
    archive: Archive, principal: Principal, sha256: str
) -> tuple[int, Iterator[bytes]]:
    """(size, chunks) of a blob the principal may read."""
    with archive.db.read() as session:
        size = visible_blob(session, principal, sha256).size
    return size, inventory.open_blob(archive, sha256)


def put_blob(
    archive: Archive, principal: Principal, source: Iterable[bytes], ref: RefSpec | None
) -> PutOutcome:
    """Store an upload, under ``ref`` in a namespace the principal may write.

    Only admins may put without a reference: anyone else could never see the blob
    again, and it would only wait for gc.
    """
    if ref is None:
        if not principal.is_admin:
            raise BadInput("give ?ref=NAMESPACE:KEY[:LABEL]: an upload needs a reference")
        with set_by(principal.user_id):
            return ingest.put_stream(archive, source, ref)
    with claimed(archive, principal, ref.namespace), set_by(principal.user_id):
        return ingest.put_stream(archive, source, ref)


def on_behalf_of(
    principal: Principal, action: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """Run ``action`` with the references it sets recorded as ``principal``'s (what
    erasing them takes: ``services.access.erasure``)."""
    with set_by(principal.user_id):
        return action(*args, **kwargs)


def actor_of(principal: Principal) -> str:
    return f"api:{principal.user_name}"


def set_ref(archive: Archive, principal: Principal, spec: RefSpec, sha256: str) -> ReferenceView:
    """Point ``spec`` at a blob the principal can see (audited, like the CLI's)."""
    now = archive.clock()
    with archive.db.write() as session:
        blob = visible_blob(session, principal, sha256)
        claim_namespace(session, principal, spec.namespace, now)
        with set_by(principal.user_id):
            refs.point(session, now, spec, blob, actor=actor_of(principal))
        return _view(session, spec)


def remove_ref(archive: Archive, principal: Principal, spec: RefSpec) -> None:
    check_namespace(archive, principal, spec.namespace)
    refs.remove_ref(archive, spec, actor=actor_of(principal))


def reference_view(archive: Archive, spec: RefSpec) -> ReferenceView:
    with archive.db.read() as session:
        return _view(session, spec)


def _view(session: Session, spec: RefSpec) -> ReferenceView:
    for view in list_references(session, namespace=spec.namespace):
        if view.key == spec.key and view.label == spec.label:
            return view
    raise NotFound(f"no reference {spec}")


def list_refs(archive: Archive, principal: Principal, namespace: str) -> list[ReferenceView]:
    with archive.db.read() as session:
        visible_namespace(session, principal, namespace)
        return list_references(session, namespace=namespace)


@dataclass(frozen=True)
class NamespaceSummary:
    name: str
    tenant: str | None
    references: int
    created_at: datetime


def list_namespaces(archive: Archive, principal: Principal) -> list[NamespaceSummary]:
    counts = (
        select(Reference.namespace_id, func.count().label("n"))
        .group_by(Reference.namespace_id)
        .subquery()
    )
    with archive.db.read() as session:
        rows = session.execute(
            select(Namespace.name, Tenant.name, func.coalesce(counts.c.n, 0), Namespace.created_at)
            .outerjoin(Tenant, Namespace.tenant_id == Tenant.id)
            .outerjoin(counts, counts.c.namespace_id == Namespace.id)
            .where(visible_namespace_filter(principal))
            .order_by(Namespace.name)
        )
        return [NamespaceSummary(name, tenant, int(n), at) for name, tenant, n, at in rows]


def check_namespace(archive: Archive, principal: Principal, name: str) -> None:
    """NotFound unless the principal may see namespace ``name``."""
    with archive.db.read() as session:
        visible_namespace(session, principal, name)


def claim(archive: Archive, principal: Principal, name: str) -> bool:
    """Make ``name`` writable by the principal (created for their tenant when new)
    before anything is stored under it; NotFound if another tenant's. True when this
    call created it."""
    with archive.db.write() as session:
        return claim_namespace_created(session, principal, name, archive.clock())[1]


@contextmanager
def claimed(archive: Archive, principal: Principal, name: str) -> Iterator[None]:
    """``claim`` for the duration of a request that stores under ``name``: if the
    request fails (too large, rejected, cut off), a namespace it created goes again —
    unless something already refers to it — so a failed request creates nothing."""
    created = claim(archive, principal, name)
    try:
        yield
    except BaseException:
        if created:
            _drop_if_unused(archive, name)
        raise


def _drop_if_unused(archive: Archive, name: str) -> None:
    with archive.db.write() as session:
        used = exists().where(Reference.namespace_id == Namespace.id) | exists().where(
            Hold.namespace_id == Namespace.id
        )
        session.execute(
            delete(Namespace)
            .where(Namespace.name == name, ~used)
            .execution_options(synchronize_session=False)
        )


def _audited_references(entry: AuditView) -> list[str] | None:
    """The references an audit entry names (reference changes, erasures); None when
    it names none and is a storage fact (a copy deleted, a tree extracted)."""
    evidence = entry.evidence if isinstance(entry.evidence, dict) else {}
    named = [evidence[k] for k in ("ref", "reference") if isinstance(evidence.get(k), str)]
    listed = evidence.get("references")
    if isinstance(listed, list):
        named += [str(item) for item in listed]
    if named or "user" in evidence:
        return named
    return None


def visible_audit(
    archive: Archive, principal: Principal, entries: list[AuditView]
) -> list[AuditView]:
    """The audit entries ``principal`` may read. Copy-level entries are storage facts
    every operator sees, like the plan; an entry naming references (namespace, key,
    the user who changed them) only when every namespace it names is visible."""
    if principal.is_admin:
        return entries
    with archive.db.read() as session:
        visible = set(
            session.scalars(select(Namespace.name).where(visible_namespace_filter(principal)))
        )
    kept = []
    for entry in entries:
        named = _audited_references(entry)
        if named is None or (named and all(ref.split(":", 1)[0] in visible for ref in named)):
            kept.append(entry)
    return kept
