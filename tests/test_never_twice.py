"""Never paid twice, round 2: the paths to a paid duplicate that an outside attack found, each
shown as the user meets it (real processes, the emulator, both databases)."""

from __future__ import annotations

import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dubrunner.emulator import Emulator
from dubrunner.records import JobSpec, Lease
from dubrunner.store import LoadConflict, Store
from tests.conftest import (
    BOTH_DATABASES,
    TOKEN,
    Database,
    assert_exactly_once,
    clean_env,
    db_rows,
    dead_owner,
    load_jobs,
    run_cli,
    start,
    states,
    write_manifest,
)

pytestmark = pytest.mark.slow


@BOTH_DATABASES
def test_a_504_whose_request_appears_later_is_looked_up_again_not_resent(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    # A proxy answers 504 while the backend goes on and creates the request a second later.
    # Failed before: the look-up ran ~0.5 s after the 504, found nothing yet, and the job was
    # sent again (and paid twice).
    emulator.update(p504_create=0.3, create_delay=1.0)
    manifest = write_manifest(tmp_path / "m.yaml", 40)
    r = run_cli(["submit", str(manifest), "--lookup-grace", "2.5"], env, timeout=120)
    assert r.code == 0, r.err
    assert emulator.stats.late_creates > 0
    assert_exactly_once(emulator, db, 40)
    found = db_rows(db, "SELECT count(*) FROM attempts WHERE kind = 'lookup' AND outcome = 'found'")
    assert found[0][0] == emulator.stats.late_creates


@BOTH_DATABASES
def test_a_worker_paused_past_its_lease_never_sends_what_another_took(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    # SIGSTOP stands for a laptop lid or a paused VM. Failed before: the paused worker woke up
    # and sent the jobs it had claimed, which the other worker had reclaimed and sent meanwhile.
    emulator.update(latency_ms=50)
    manifest = write_manifest(tmp_path / "m.yaml", 300)
    assert run_cli(["load", str(manifest)], env).code == 0
    # Under a rate limit every thread holds a claimed job while it waits for its turn: the
    # jobs a pause strands are claimed but not yet sent.
    env = {
        **env,
        "DUBRUNNER_REQUEST_TIMEOUT": "0.6",
        "DUBRUNNER_CONCURRENCY": "8",
        "DUBRUNNER_RATE": "20",
    }
    paused = start(["work", "--batch", "b"], env)
    other = start(["work", "--batch", "b"], env)
    for _ in range(5):
        # Stopped while it holds claimed jobs (a slow machine may start it after a fixed sleep).
        if not _holds_jobs(db, paused.pid, paused.poll):
            break
        paused.send_signal(signal.SIGSTOP)
        time.sleep(1.6)  # past the lease (2 × 0.6 s): the other worker reclaims its jobs
        paused.send_signal(signal.SIGCONT)
        time.sleep(0.8)
    for proc in (paused, other):
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err
    final = run_cli(["resume"], env, timeout=120)
    assert final.code == 0, final.err
    assert_exactly_once(emulator, db, 300)
    taken = db_rows(db, "SELECT count(*) FROM attempts WHERE kind = 'lookup'")[0][0]
    assert taken > 0, "the pauses came too late to make anything reclaimable"


@BOTH_DATABASES
def _holds_jobs(db: Database, pid: int, exited: Callable[[], int | None]) -> bool:
    """Whether the worker of process `pid` holds a job within 20 s (False once it has ended)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and exited() is None:
        held = db_rows(db, "SELECT count(*) FROM jobs WHERE owner LIKE ?", f"%:{pid}:%")[0][0]
        if held:
            return True
        time.sleep(0.05)
    return False


def test_retry_after_a_remote_failure_asks_first_and_tracks_the_new_request(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.2)
    manifest = write_manifest(tmp_path / "m.yaml", 6, failing=frozenset({1, 4}))
    assert run_cli(["submit", str(manifest), "--wait", "--interval", "0.2"], env).code == 1
    before = db_rows(db, "SELECT reference_id, state FROM jobs ORDER BY id")
    # Failed before: `retry` put jobs that had run (and been paid for) back without a word.
    refused = run_cli(["retry", "--state", "failed"], env)
    assert refused.code == 2, refused.err
    assert "2 of these jobs failed at the API after running" in refused.err
    assert "--yes" in refused.err
    assert db_rows(db, "SELECT reference_id, state FROM jobs ORDER BY id") == before
    r = run_cli(["retry", "--state", "failed", "--yes"], env)
    assert r.code == 0, r.err
    # The resend's answer is lost: the look-up finds the old, failed request and the new one.
    # Failed before: the oldest was adopted and the new, paid request went untracked.
    emulator.update(drop_after_accept=1.0, fail_marker="")
    r = run_cli(["resume"], env)
    assert r.code == 0, r.err
    ledger = emulator.accepted()
    for ref in ("b-ep00001", "b-ep00004"):
        assert len(ledger[ref]) == 2  # one paid failure, one confirmed retry: no more
        [(request_id, state)] = db_rows(
            db, "SELECT request_id, state FROM jobs WHERE reference_id = ?", ref
        )
        assert (request_id, state) == (ledger[ref][-1], "submitted")
    assert all(
        len(ids) == 1 for ref, ids in ledger.items() if ref not in ("b-ep00001", "b-ep00004")
    )


class _Trickle(socketserver.BaseRequestHandler):
    """Answers a POST with one header line every half second, for ever; GETs honestly."""

    def handle(self) -> None:
        conn: socket.socket = self.request
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            if data.startswith(b"GET"):
                body = b'{"data": [], "pagination": {"total": 0}}'
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n"
                conn.sendall(head.encode() + body)
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for i in range(600):
                conn.sendall(f"X-Trickle-{i}: x\r\n".encode())
                time.sleep(0.5)
        except OSError:
            return


@pytest.fixture
def trickle() -> Iterator[socketserver.ThreadingTCPServer]:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_trickling_header_lines_cannot_hold_a_post_for_ever(
    trickle: socketserver.ThreadingTCPServer, tmp_path: Path
) -> None:
    # Failed before: the deadline started once the headers had arrived, so the POST stayed in
    # flight for ever (and its lease kept being renewed).
    env = clean_env(
        CHAMELAION_BASE_URL=f"http://127.0.0.1:{trickle.server_address[1]}/api/",
        CHAMELAION_API_KEY=TOKEN,
        DUBRUNNER_DB=str(tmp_path / "jobs.db"),
        DUBRUNNER_LOOKUP_GRACE="0.2",
    )
    manifest = write_manifest(tmp_path / "m.yaml", 1)
    started = time.monotonic()
    args = ["submit", str(manifest), "--request-timeout", "2", "--max-attempts", "1"]
    r = run_cli(args, env, timeout=90)
    assert time.monotonic() - started < 40  # connect allowance (10 s) + 2 s, then a look-up
    assert r.code == 1, r.err
    [(state, error, lookup_needed)] = db_rows(
        tmp_path / "jobs.db", "SELECT state, last_error, lookup_needed FROM jobs"
    )
    assert state == "failed" and "ReadTimeout" in error and lookup_needed


def _specs(n: int, video: str = "v") -> list[JobSpec]:
    return [
        JobSpec(f"r{i}", f"https://cdn.test/{video}{i}.mp4", f"https://cdn.test/a{i}.wav", False, i)
        for i in range(n)
    ]


@BOTH_DATABASES
def test_a_changed_manifest_never_rewrites_a_job_a_worker_has_claimed(
    db: Database, tmp_path: Path
) -> None:
    store = Store(db.url)
    store.load("b", _specs(3), "m.yaml")
    # A worker claims a job between the load's read of the table and its update (on SQLite the
    # load's write lock rules that out; on PostgreSQL workers do not take the loads' lock).
    # Failed before: the update was guarded by id alone, so the claimed job was put back to
    # pending with the new URL, and sent a second time.
    worker = Store(db.url)
    claimed: list[int] = []

    def claim_meanwhile(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE JOBS SET VIDEO_URL") and not claimed:
            if db.kind == "sqlite":
                # SQLite serialises writers: simulate the claim in the load's own transaction.
                cursor.execute(  # type: ignore[attr-defined]
                    "UPDATE jobs SET state = 'submitting', owner = 'w' WHERE reference_id = 'r1'"
                )
                claimed.append(1)
            else:
                claimed.extend(j.id for j in worker.claim("w", "b", 3, Lease(60)))

    sa.event.listen(store.engine, "before_cursor_execute", claim_meanwhile)
    with pytest.raises(LoadConflict) as info:
        store.load("b", _specs(3, video="changed-v"), "m2.yaml")
    assert "was taken by a worker while loading" in info.value.problems[0]
    urls = db_rows(db, "SELECT video_url FROM jobs ORDER BY id")
    assert all("changed" not in u for (u,) in urls)
    if db.kind == "postgresql":  # the worker's claim stands; on SQLite it was rolled back too
        assert states(db) == {"submitting": 3}
    store.close()
    worker.close()


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_concurrent_loads_sharing_reference_ids_conflict_cleanly(
    db: Database, tmp_path: Path
) -> None:
    # Failed before (PostgreSQL): "internal error: IntegrityError" with ~5 KB of SQL
    # parameters on stderr, media URL credentials included.
    env = clean_env(DUBRUNNER_DB=db.url)
    assert run_cli(["db", "upgrade"], env).code == 0
    manifests = []
    for name in ("one", "two"):
        lines = [f"batch: {name}", "jobs:"]
        for i in range(20_000):
            lines += [
                f"  - reference_id: shared-{i}",
                f"    video: https://user:pa55word@cdn.test/{name}/{i}.mp4",
                f"    audio: https://cdn.test/{name}/{i}.wav",
            ]
        path = tmp_path / f"{name}.yaml"
        path.write_text("\n".join(lines) + "\n")
        manifests.append(path)
    procs = [start(["load", str(m)], env) for m in manifests]
    results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    codes = sorted(code for _, _, code in results)
    assert codes == [0, 2], results
    err = next(e for _, e, code in results if code == 2)
    assert "already belongs to batch" in err
    assert "pa55word" not in err and "INSERT" not in err and "Traceback" not in err
    assert db_rows(db, "SELECT count(*) FROM jobs")[0][0] == 20_000


@BOTH_DATABASES
def test_a_dead_workers_jobs_are_reclaimed_once_settled_not_when_the_lease_expires(
    db: Database, tmp_path: Path
) -> None:
    # The README said a dead worker on this host was reclaimed "at once"; it waited for the
    # settle time, rightly: a POST it sent just before dying may still be being created.
    store = load_jobs(db, write_manifest(tmp_path / "m.yaml", 3))
    owner = dead_owner()
    lease = Lease(0.6)  # window 0.2 s, settle 0.8 s after the last hold, lease 1.2 s
    held = store.claim(owner, "b", 3, lease)
    claimed_at = time.time()
    assert store.mark_owner_dead(owner) == 3
    assert store.claim("resumer", "b", 3, lease) == []  # not settled: a look-up could miss
    time.sleep(max(0.0, claimed_at + lease.window + lease.request_timeout - time.time()) + 0.05)
    again = store.claim("resumer", "b", 3, lease)
    assert time.time() < claimed_at + lease.seconds  # before the lease would have lapsed
    assert sorted(j.id for j in again) == sorted(j.id for j in held)
    assert all(j.lookup_owed for j in again)
    store.close()


def test_a_renamed_manifest_does_not_pay_for_the_same_media_again(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    # Found by an outside attack: without `batch:` and reference_ids, the batch is the file's
    # name and the ids derive from it, so a copy (season1-v2.yaml) or the same file under
    # another case (Season1.yaml on a case-insensitive disk) paid for every job again.
    body = "jobs:\n" + "".join(
        f"  - video: https://cdn.test/v/{i}.mp4\n    audio: https://cdn.test/a/{i}.wav\n"
        for i in range(3)
    )
    (tmp_path / "season1.yaml").write_text(body)
    (tmp_path / "Season1.yaml").write_text(body)
    assert run_cli(["submit", str(tmp_path / "season1.yaml")], env).code == 0
    again = run_cli(["submit", str(tmp_path / "Season1.yaml")], env)
    assert again.code == 2, again.err
    assert "the same video and audio were loaded before as reference_id" in again.err
    assert "--allow-same-media" in again.err
    assert emulator.stats.accepted == 3
    assert states(db) == {"submitted": 3}
    # Asked for, it is done (and paid) again.
    forced = run_cli(["submit", str(tmp_path / "Season1.yaml"), "--allow-same-media"], env)
    assert forced.code == 0, forced.err
    assert emulator.stats.accepted == 6
