"""The job table on a real SQLite file: claims are atomic, transitions are guarded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import sqlalchemy as sa

from dubrunner.db import Database as DbEngine
from dubrunner.db import insert_many
from dubrunner.models import ApiHealth, Job
from dubrunner.records import AttemptRecord, HealthView, JobSpec, Lease, RemoteView, Tally, utcnow
from dubrunner.states import State
from dubrunner.store import LoadConflict, Store, StoreError
from tests.conftest import Database

LONG = Lease(60)
TALLY = Tally(posts=1, tries=1)
SENT = AttemptRecord("generate", "accepted", 200, None, 5, "x")


def specs(n: int, prefix: str = "r") -> list[JobSpec]:
    return [
        JobSpec(f"{prefix}{i}", f"https://v.test/{i}", f"https://a.test/{i}", False, i + 2)
        for i in range(n)
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "s.db"), pool_size=8)
    yield s
    s.close()


def test_file_is_private_and_in_wal_mode(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "s.db"
    assert path.stat().st_mode & 0o077 == 0
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_load_is_all_or_nothing(store: Store) -> None:
    plan = store.load("b1", specs(5), "m.yaml")
    assert len(plan.new) == 5
    # A reference_id of another batch: the whole load is refused.
    with pytest.raises(LoadConflict) as info:
        store.load("b2", [*specs(3, "new"), specs(1)[0]], "other.yaml")
    assert "already belongs to batch 'b1'" in info.value.problems[0]
    assert "other.yaml:2" in info.value.problems[0]
    assert store.counts() == {"pending": 5}
    assert store.load("b1", specs(5), "m.yaml").unchanged == 5


def test_a_jobs_settings_are_loaded_and_claimed_as_the_manifest_says(store: Store) -> None:
    # Failed before: the insert's dict key did not match the column's short name and was
    # dropped, so a job with disable_active_speaker_detection: true was sent with false, and
    # loading the same manifest again called it "already sent with other settings".
    on = JobSpec("on", "https://v.test/on", "https://a.test/on", True, 2)
    off = JobSpec("off", "https://v.test/off", "https://a.test/off", False, 3)
    store.load("b", [on, off], "m.yaml")
    claimed = {j.reference_id: j for j in store.claim("w", "b", 10, LONG)}
    assert claimed["on"].disable_active_speaker_detection is True
    assert claimed["off"].disable_active_speaker_detection is False
    assert store.load("b", [on, off], "m.yaml").unchanged == 2


def test_concurrent_claims_never_overlap(tmp_path: Path, store: Store) -> None:
    store.load("b", specs(400), "m.yaml")
    stores = [Store(str(tmp_path / "s.db"), pool_size=2) for _ in range(4)]
    taken: list[list[int]] = [[] for _ in stores]

    def claim_all(i: int) -> None:
        while jobs := stores[i].claim(f"w{i}", "b", 7, LONG):
            taken[i].extend(j.id for j in jobs)

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [job for ids in taken for job in ids]
    assert len(every) == 400 == len(set(every))
    for s in stores:
        s.close()


def test_expired_lease_is_reclaimed_with_a_lookup(store: Store) -> None:
    store.load("b", specs(2), "m.yaml")
    first = store.claim("dead", "b", 2, Lease(0.025))
    assert [j.lookup_owed for j in first] == [False, False]
    assert store.claim("alive", "b", 5, LONG) == []  # leases still valid
    time.sleep(0.1)
    again = store.claim("alive", "b", 5, LONG)
    assert [j.id for j in again] == [j.id for j in first]
    assert all(j.lookup_owed for j in again)
    # The dead owner's late answer no longer moves the job.
    assert not store.mark_submitted(first[0].id, "dead", "x", SENT, TALLY)
    assert store.mark_submitted(first[0].id, "alive", "x", SENT, TALLY)
    assert store.counts() == {"submitted": 1, "submitting": 1}


def test_release_retry_and_cancel(store: Store) -> None:
    store.load("b", specs(4), "m.yaml")
    jobs = store.claim("me", "b", 4, LONG)
    assert store.release([jobs[0].id], "me") == 1
    store.mark_failed(jobs[1].id, "me", None, Tally(1, 1, 400, "no face"), False, None)
    store.mark_halted(jobs[2].id, "me", None, Tally(1, 1, 429, "token limit"), False, None)
    store.mark_submitted(jobs[3].id, "me", "x", SENT, TALLY)
    assert store.retry("b", [State.FAILED], "face").pending == 1
    assert store.retry("b", [State.FAILED, State.HALTED], None).pending == 1
    assert store.counts() == {"pending": 3, "submitted": 1}
    assert store.cancel("b", ["r0"])[:2] == (1, 0)
    assert store.cancel("b", [])[:2] == (2, 0)
    assert store.counts() == {"cancelled": 3, "submitted": 1}


def test_cancel_keeps_jobs_that_may_be_at_the_api(store: Store) -> None:
    store.load("b", specs(2), "m.yaml")
    jobs = store.claim("me", "b", 2, LONG)
    # The first one's POST got no answer; then the run was stopped: pending, owed a look-up.
    store.hand_back(jobs[0].id, "me", None, lookup_owed=True, lookup_after=None)
    store.release([jobs[1].id], "me")
    assert store.cancel("b", [])[:2] == (1, 1)
    assert store.counts() == {"cancelled": 1, "pending": 1}


def test_bad_database_is_a_store_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a SQLite database"):
        Store(str(junk))
    with pytest.raises(StoreError, match="no such directory"):
        Store(str(tmp_path / "missing" / "x.db"))


def test_group_commit_batches_without_falling_back(store: Store) -> None:
    store.load("b", specs(200), "m.yaml")
    jobs = store.claim("me", "b", 200, LONG)
    store.start_group_commit()
    results: list[bool] = []
    processing = RemoteView(State.PROCESSING, "processing", None, None, None, None, None)

    def finish(chunk: list[int]) -> None:
        for job_id in chunk:
            results.append(store.mark_submitted(job_id, "me", f"r{job_id}", SENT, TALLY))
            results.append(store.record_remote(job_id, "me", processing, None))

    ids = [j.id for j in jobs]
    threads = [threading.Thread(target=finish, args=(ids[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 400
    assert store.db.group_commit_fallbacks == 0
    # A write that finds its row gone (someone else took the job) is told so, alone.
    assert store.mark_failed(ids[0], "me", None, TALLY, False, None) is False
    assert store.counts() == {"processing": 200}


@pytest.mark.parametrize(
    "db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)], indirect=True
)
def test_a_loads_fast_insert_writes_what_sqlalchemys_insert_writes(db: Database) -> None:
    """insert_many (the driver's executemany, used to load new jobs) against SQLAlchemy's own
    insert of the same values: every column alike, defaults, booleans and times included."""
    database = DbEngine(db.url)
    database.upgrade()
    jobs = cast(sa.Table, Job.__table__)
    now = utcnow()
    shared = {"batch": "b", "state": State.PENDING, "attempts": 0, "lookup_needed": False}
    shared |= {"created_at": now, "updated_at": now}
    own = ("reference_id", "video_url", "audio_url", "disable_active_speaker_detection", "tries")
    rows = [
        ("1", "https://x.test/v1.mp4", "https://x.test/a1.wav", True, 0),
        ("2", "https://x.test/v2.mp4", "https://x.test/a2.wav", False, 2),
    ]
    try:
        with database.write() as conn:
            insert_many(conn, jobs, own, [(f"fast-{n}", *rest) for n, *rest in rows], shared)
            for n, *rest in rows:
                values = dict(zip(own, (f"slow-{n}", *rest), strict=True))
                conn.execute(sa.insert(jobs), {**shared, **values})
        with database.read() as conn:
            found = {row.reference_id: row._asdict() for row in conn.execute(sa.select(jobs))}
    finally:
        database.close()
    assert set(found) == {"fast-1", "fast-2", "slow-1", "slow-2"}
    for n, *_ in rows:
        fast, slow = found[f"fast-{n}"], found[f"slow-{n}"]
        assert {k: v for k, v in fast.items() if k not in ("id", "reference_id")} == {
            k: v for k, v in slow.items() if k not in ("id", "reference_id")
        }
    assert found["fast-1"]["disable_asd"] is True
    assert found["fast-2"]["created_at"] == now and found["fast-2"]["tries"] == 2
    assert found["fast-2"]["remote_missing"] == 0  # a column default, not given
    # As stored, read past SQLAlchemy: the same forms of booleans and times.
    sql = "SELECT disable_asd, created_at, remote_missing FROM jobs WHERE reference_id = ?"
    assert db.rows(sql, "fast-1") == db.rows(sql, "slow-1")


def test_a_driver_of_another_parameter_style_takes_sqlalchemys_own_insert(tmp_path: Path) -> None:
    """insert_many writes ? or %s itself; a driver of named parameters (`:name`) gets
    SQLAlchemy's executemany instead, the same rows."""
    url = f"sqlite:///{tmp_path / 'named.db'}"
    database = DbEngine(url)
    database.upgrade()
    database.close()
    engine = sa.create_engine(url, paramstyle="named")
    jobs = cast(sa.Table, Job.__table__)
    shared = {"batch": "b", "state": State.PENDING, "attempts": 0, "lookup_needed": False}
    shared |= {"created_at": utcnow(), "updated_at": utcnow()}
    own = ("reference_id", "video_url", "audio_url", "disable_active_speaker_detection")
    try:
        with engine.begin() as conn:
            assert conn.dialect.paramstyle == "named"
            insert_many(
                conn, jobs, own, [("n1", "https://v.test/1", "https://a.test/1", True)], shared
            )
            row = conn.execute(sa.select(jobs)).one()._asdict()
    finally:
        engine.dispose()
    assert (row["reference_id"], row["disable_asd"], row["remote_missing"]) == ("n1", True, 0)


@pytest.mark.parametrize(
    "db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)], indirect=True
)
def test_two_writers_making_the_same_row_at_once_both_succeed(db: Database) -> None:
    """Four workers starting on one PostgreSQL database each record the API's health: two
    found no row, both inserted, one died of IntegrityError (seen in .ci/run). The one whose
    INSERT loses now updates the winner's row."""
    store = Store(db.url)
    database = store.db
    table = cast(sa.Table, ApiHealth.__table__)
    first = {"condition": "healthy", "updated_at": 1.0, "worker": "first"}
    second = HealthView("https://api.test", "outage", 2.0, None, 5.0, "HTTP 500", 2.0, "second")
    failed: list[BaseException] = []

    def write_second() -> None:
        try:
            store.record_health(second)
        except BaseException as exc:
            failed.append(exc)

    try:
        with database.write() as conn:  # the first writer's INSERT, not yet committed
            conn.execute(sa.insert(table).values(base_url="https://api.test", **first))
            writer = threading.Thread(target=write_second)
            writer.start()
            time.sleep(0.5)  # the second has found no row and waits on the key (or the lock)
        writer.join(30)
        with database.read() as conn:
            rows = [r._asdict() for r in conn.execute(sa.select(table))]
    finally:
        store.close()
    assert not writer.is_alive() and failed == []
    assert len(rows) == 1 and rows[0]["worker"] == "second" and rows[0]["condition"] == "outage"
