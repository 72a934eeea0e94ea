"""Every rule of the safety policy, boundaries included, as a table."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from safekeeper.policy import (
    Candidate,
    Evidence,
    LocationRules,
    OtherCopy,
    Policy,
    Rule,
    decide,
    select_under_pressure,
    watermark_bytes,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

POLICY = Policy(
    min_archive_copies=1,
    grace_period=7 * DAY,
    verify_max_age=30 * DAY,
    locations={
        "inbox": LocationRules("source"),
        "kept-a-week": LocationRules("source", retention=7 * DAY),
        "buffer": LocationRules("buffer", delete_after_copies_at=("tape-a", "tape-b")),
        "scratch": LocationRules("processing"),
        "tape-a": LocationRules("archive"),
        "tape-b": LocationRules("archive"),
    },
)

ARCHIVED = OtherCopy("tape-a", "archive", "present", NOW - DAY)
BASE = Evidence(
    location="inbox",
    state="present",
    created_at=NOW - 30 * DAY,
    unreferenced_since=None,
    others=(ARCHIVED,),
)


def ev(**changes: object) -> Evidence:
    return replace(BASE, **changes)  # type: ignore[arg-type]


# fmt: off
CASES = [
    # (name, evidence, policy, allowed, rule)
    ("archived and verified", ev(), POLICY, True, Rule.ARCHIVED_ELSEWHERE),
    ("no archive copy", ev(others=()), POLICY, False, Rule.ARCHIVED_ELSEWHERE),
    ("archive copy unverified",
     ev(others=(replace(ARCHIVED, verified_at=None),)), POLICY, False, Rule.ARCHIVED_ELSEWHERE),
    ("archive copy verified exactly at max age",
     ev(others=(replace(ARCHIVED, verified_at=NOW - 30 * DAY),)), POLICY, True,
     Rule.ARCHIVED_ELSEWHERE),
    ("archive copy verified too long ago",
     ev(others=(replace(ARCHIVED, verified_at=NOW - 30 * DAY - timedelta(seconds=1)),)),
     POLICY, False, Rule.ARCHIVED_ELSEWHERE),
    ("stale verification fine without verify_max_age",
     ev(others=(replace(ARCHIVED, verified_at=NOW - 400 * DAY),)),
     replace(POLICY, verify_max_age=None), True, Rule.ARCHIVED_ELSEWHERE),
    ("archive copy missing", ev(others=(replace(ARCHIVED, state="missing"),)), POLICY, False,
     Rule.ARCHIVED_ELSEWHERE),
    ("archive copy corrupt", ev(others=(replace(ARCHIVED, state="corrupt"),)), POLICY, False,
     Rule.ARCHIVED_ELSEWHERE),
    ("archive copy being deleted", ev(others=(replace(ARCHIVED, state="deleting"),)), POLICY,
     False, Rule.ARCHIVED_ELSEWHERE),
    ("archive copy pending", ev(others=(replace(ARCHIVED, state="pending"),)), POLICY, False,
     Rule.ARCHIVED_ELSEWHERE),
    ("archive object gone on re-check", ev(others=(replace(ARCHIVED, confirmed=False),)), POLICY,
     False, Rule.ARCHIVED_ELSEWHERE),
    ("archive object re-confirmed", ev(others=(replace(ARCHIVED, confirmed=True),)), POLICY,
     True, Rule.ARCHIVED_ELSEWHERE),
    ("a verified buffer copy is not an archive copy",
     ev(others=(OtherCopy("buffer", "buffer", "present", NOW),)), POLICY, False,
     Rule.ARCHIVED_ELSEWHERE),
    ("two archive copies needed, one there", ev(), replace(POLICY, min_archive_copies=2), False,
     Rule.ARCHIVED_ELSEWHERE),
    ("two archive copies needed, two there",
     ev(others=(ARCHIVED, replace(ARCHIVED, location="tape-b"))),
     replace(POLICY, min_archive_copies=2), True, Rule.ARCHIVED_ELSEWHERE),
    ("delete_after_copies_at: one of two", ev(location="buffer"), POLICY, False,
     Rule.ARCHIVED_ELSEWHERE),
    ("delete_after_copies_at: both",
     ev(location="buffer", others=(ARCHIVED, replace(ARCHIVED, location="tape-b"))), POLICY,
     True, Rule.ARCHIVED_ELSEWHERE),
    ("not present", ev(state="deleting"), POLICY, False, Rule.NOT_PRESENT),
    ("missing copy", ev(state="missing"), POLICY, False, Rule.NOT_PRESENT),
    ("held", ev(held=True), POLICY, False, Rule.HOLD),
    ("held garbage", ev(held=True, unreferenced_since=NOW - 100 * DAY), POLICY, False, Rule.HOLD),
    ("transfer source", ev(transfer_source=True), POLICY, False, Rule.IN_USE),
    ("needed by a job", ev(location="scratch", needed_by_job=True), POLICY, False, Rule.IN_USE),
    ("younger than retention",
     ev(location="kept-a-week", created_at=NOW - 7 * DAY + timedelta(seconds=1)), POLICY, False,
     Rule.RETENTION),
    ("exactly at retention", ev(location="kept-a-week", created_at=NOW - 7 * DAY), POLICY, True,
     Rule.ARCHIVED_ELSEWHERE),
    ("retention keeps garbage too",
     ev(location="kept-a-week", created_at=NOW - DAY, unreferenced_since=NOW - 30 * DAY),
     POLICY, False, Rule.RETENTION),
    ("garbage past grace", ev(others=(), unreferenced_since=NOW - 8 * DAY), POLICY, True,
     Rule.GARBAGE),
    ("garbage exactly at grace", ev(others=(), unreferenced_since=NOW - 7 * DAY), POLICY, True,
     Rule.GARBAGE),
    ("unreferenced within grace, no archive",
     ev(others=(), unreferenced_since=NOW - 7 * DAY + timedelta(seconds=1)), POLICY, False,
     Rule.ARCHIVED_ELSEWHERE),
    ("unreferenced within grace, archived", ev(unreferenced_since=NOW - DAY), POLICY, True,
     Rule.ARCHIVED_ELSEWHERE),
    ("archive copy of a live blob", ev(location="tape-a", others=()), POLICY, False,
     Rule.ARCHIVE),
    ("archive copy of garbage", ev(location="tape-a", unreferenced_since=NOW - 8 * DAY), POLICY,
     True, Rule.GARBAGE),
    ("last copy, no archive required",
     ev(others=(replace(ARCHIVED, state="deleting"),)), replace(POLICY, min_archive_copies=0),
     False, Rule.LAST_COPY),
    ("another copy, no archive required",
     ev(others=(OtherCopy("buffer", "buffer", "present", None),)),
     replace(POLICY, min_archive_copies=0), True, Rule.ARCHIVED_ELSEWHERE),
    # re-confirmed mode (gc's re-check): only copies confirmed in their stores count
    ("re-confirmed: archive copy confirmed",
     ev(reconfirmed=True, others=(replace(ARCHIVED, confirmed=True),)), POLICY, True,
     Rule.ARCHIVED_ELSEWHERE),
    ("re-confirmed: archive copy not checked",
     ev(reconfirmed=True), POLICY, False, Rule.ARCHIVED_ELSEWHERE),
    ("re-confirmed: archive copy found changed",
     ev(reconfirmed=True, others=(replace(ARCHIVED, confirmed=False),)), POLICY, False,
     Rule.ARCHIVED_ELSEWHERE),
    ("re-confirmed: one archive confirmed, another found gone",
     ev(reconfirmed=True, others=(replace(ARCHIVED, confirmed=True),
                                  replace(ARCHIVED, location="tape-b", confirmed=False))),
     POLICY, False, Rule.ARCHIVED_ELSEWHERE),
    ("planning: one archive fine, another found gone",
     ev(others=(ARCHIVED, replace(ARCHIVED, location="tape-b", confirmed=False))),
     POLICY, False, Rule.ARCHIVED_ELSEWHERE),
    ("re-confirmed, no archive required: the other copy not checked",
     ev(reconfirmed=True, others=(OtherCopy("buffer", "buffer", "present", None),)),
     replace(POLICY, min_archive_copies=0), False, Rule.LAST_COPY),
    ("re-confirmed, no archive required: the other copy confirmed",
     ev(reconfirmed=True, others=(OtherCopy("buffer", "buffer", "present", None, True),)),
     replace(POLICY, min_archive_copies=0), True, Rule.ARCHIVED_ELSEWHERE),
    ("re-confirmed, no archive required: the other copy found gone",
     ev(reconfirmed=True, others=(OtherCopy("buffer", "buffer", "present", None, False),)),
     replace(POLICY, min_archive_copies=0), False, Rule.ARCHIVED_ELSEWHERE),
    ("no archive required: the only other copy found gone (planning)",
     ev(others=(OtherCopy("buffer", "buffer", "present", None, False),)),
     replace(POLICY, min_archive_copies=0), False, Rule.ARCHIVED_ELSEWHERE),
    ("re-confirmed, delete_after_copies_at: one not checked",
     ev(location="buffer", reconfirmed=True,
        others=(replace(ARCHIVED, confirmed=True), replace(ARCHIVED, location="tape-b"))),
     POLICY, False, Rule.ARCHIVED_ELSEWHERE),
    ("re-confirmed, delete_after_copies_at: both confirmed",
     ev(location="buffer", reconfirmed=True,
        others=(replace(ARCHIVED, confirmed=True),
                replace(ARCHIVED, location="tape-b", confirmed=True))),
     POLICY, True, Rule.ARCHIVED_ELSEWHERE),
    ("re-confirmed garbage needs no other copy",
     ev(reconfirmed=True, unreferenced_since=NOW - 8 * DAY,
        others=(replace(ARCHIVED, confirmed=False),)), POLICY, True, Rule.GARBAGE),
]


@pytest.mark.parametrize(
    ("evidence", "policy", "allowed", "rule"),
    [pytest.param(e, p, a, r, id=name) for name, e, p, a, r in CASES],
)
def test_rule_table(evidence: Evidence, policy: Policy, allowed: bool, rule: Rule) -> None:
    decision = decide(evidence, policy, NOW)
    assert (decision.allowed, decision.rule) == (allowed, rule), decision.reason
    assert decision.reason


def _candidates(*sizes_and_ages: tuple[int, int]) -> list[Candidate]:
    return [
        Candidate(i, size, NOW - timedelta(hours=age))
        for i, (size, age) in enumerate(sizes_and_ages)
    ]


@pytest.mark.parametrize(
    ("used", "expected"),
    [
        (None, []),  # usage unknown: no pressure, never "delete everything"
        (50, []),  # below the high watermark
        (80, []),  # exactly at the high watermark
        (81, [2]),  # just above: oldest first, until at or below low (60)
        (100, [2, 0]),
        (130, [2, 0, 1, 3]),  # cannot reach low: everything allowed goes
    ],
)
def test_disk_pressure_selection(used: int | None, expected: list[int]) -> None:
    candidates = _candidates((10, 5), (10, 1), (30, 9), (5, 0))
    chosen = select_under_pressure(candidates, used, high=80, low=60)
    assert [c.copy_id for c in chosen] == expected


def test_watermark_bytes() -> None:
    assert watermark_bytes(None, 100) is None
    assert watermark_bytes(500, None) == 500
    assert watermark_bytes(0.9, 1000) == 900
    assert watermark_bytes(0.9, None) is None


def test_reasons_read_like_a_person_wrote_them() -> None:
    """No archive copy at all is said plainly; durations are "7 d", not "7 days, 0:00:00"."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    policy = Policy(
        min_archive_copies=1,
        grace_period=timedelta(days=7),
        verify_max_age=None,
        locations={
            "inbox": LocationRules(kind="source"),
            "archive": LocationRules(kind="archive"),
        },
    )
    fresh = Evidence(
        location="inbox",
        state="present",
        created_at=now,
        held=False,
        transfer_source=False,
        needed_by_job=False,
        unreferenced_since=None,
        others=(),
    )
    assert decide(fresh, policy, now).reason == "no archive copy yet (run `safekeeper replicate`)"
    unverified = OtherCopy(location="archive", kind="archive", state="present", verified_at=None)
    reason = decide(replace(fresh, others=(unverified,)), policy, now).reason
    assert reason == "0 of 1 archive copies verified (1 present; run `safekeeper verify`)"
    garbage = replace(fresh, unreferenced_since=now - timedelta(days=8))
    assert decide(garbage, policy, now).reason == "unreferenced for 7 d or more"
