"""Downloads never mix jobs: one file and one partial file per job, whatever its reference_id, and
a resumed download only continues the bytes it asked for."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dubrunner import fetcher as fetcher_module
from dubrunner.emulator import Emulator, output_content
from dubrunner.fetcher import Fetcher
from dubrunner.outfiles import safe_name
from dubrunner.sessions import fetch
from dubrunner.store import Store
from tests.conftest import (
    BOTH_DATABASES,
    Database,
    FakeUi,
    db_rows,
    run_cli,
    start,
    write_manifest,
)

# All valid reference_ids; the first three used to share one file, the next two another.
COLLIDING = ("ep:1", "ep/1", "ep_1", "ep1.", "ep1", "EP1")


def _manifest(path: Path, refs: tuple[str, ...], batch: str = "b") -> Path:
    lines = [f"batch: {batch}", "jobs:"]
    for i, ref in enumerate(refs):
        lines += [
            f"  - reference_id: {json.dumps(ref)}",  # a JSON string is a YAML quoted scalar
            f"    video: https://cdn.example.com/{batch}/v{i}.mp4",
            f"    audio: https://cdn.example.com/{batch}/a{i}.wav",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


def _completed(emulator: Emulator, env: dict[str, str], tmp_path: Path, n: int) -> Path:
    """A manifest of `n` jobs, submitted and completed at the emulator; its path."""
    emulator.update(complete_after=0.05)
    manifest = write_manifest(tmp_path / "m.yaml", n)
    assert run_cli(["submit", str(manifest), "--wait", "--interval", "0.1"], env).code == 0
    return manifest


def _assert_each_row_has_its_own_output(db: Database, size: int) -> list[Path]:
    rows = db_rows(
        db,
        "SELECT reference_id, request_id, download_state, local_path, sha256, size_bytes "
        "FROM jobs ORDER BY id",
    )
    paths = []
    for ref, request_id, state, local, sha, got_size in rows:
        served = output_content(request_id, size)
        assert state == "downloaded", ref
        assert Path(local).read_bytes() == served, ref
        assert (sha, got_size) == (hashlib.sha256(served).hexdigest(), size), ref
        paths.append(Path(local))
    # Distinct even where a file system ignores case (macOS, Windows).
    assert len({str(p).lower() for p in paths}) == len(rows)
    return paths


REFERENCE_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/@+=-]{0,199}", fullmatch=True)


@pytest.mark.slow  # 500 examples: over a second
@settings(max_examples=500, derandomize=True, deadline=None)
@given(REFERENCE_IDS, REFERENCE_IDS)
def test_safe_names_are_distinct_for_distinct_ids_even_ignoring_case(a: str, b: str) -> None:
    na, nb = safe_name(a), safe_name(b)
    for ref, name in ((a, na), (b, nb)):
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._~-]*", name), name
        # Room left for an extension and ".part.json" within a 255-byte file name.
        assert len(name) <= 200
        if re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,178}[a-z0-9_-]|[a-z0-9]", ref):
            assert name == ref  # plain ids keep their readable name
    if a != b:
        assert na.lower() != nb.lower()


def test_safe_name_examples() -> None:
    names = [safe_name(ref) for ref in COLLIDING]
    assert len({n.lower() for n in names}) == len(COLLIDING)
    assert safe_name("ep_1") == "ep_1" and safe_name("ep1") == "ep1"
    assert safe_name("ep1.").startswith("ep1.~")
    assert safe_name("EP1").startswith("EP1~")
    assert safe_name(".hidden").startswith("_hidden~")
    assert len(safe_name("x" * 200)) <= 200 and safe_name("x" * 200) != safe_name("x" * 199)


@pytest.mark.slow
@BOTH_DATABASES
def test_reference_ids_that_used_to_collide_get_a_file_each(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    size = 300_000
    emulator.update(complete_after=0.05, output_bytes=size)
    manifest = _manifest(tmp_path / "m.yaml", COLLIDING)
    r = run_cli(["submit", str(manifest), "--wait", "--interval", "0.1"], env)
    assert r.code == 0, r.err
    out = tmp_path / "out"
    r = run_cli(["fetch", "--out", str(out)], env)
    assert r.code == 0, r.err
    assert "Traceback" not in r.err and "internal error" not in r.err
    assert "6 downloaded" in r.err and "0 failed" in r.err
    paths = _assert_each_row_has_its_own_output(db, size)
    assert _files(out) == sorted(paths)  # six files and nothing else: no .part left over
    assert {p.parent for p in paths} == {out / "b"}
    assert out / "b" / "ep_1.mp4" in paths and out / "b" / "ep1.mp4" in paths

    # Fetching again downloads nothing and moves no row to another job's file.
    downloads = emulator.stats.downloads
    again = run_cli(["fetch", "--out", str(out)], env)
    assert again.code == 0, again.err
    assert "0 downloaded" in again.err and "6 already there" in again.err
    assert emulator.stats.downloads == downloads
    assert _assert_each_row_has_its_own_output(db, size) == paths


@pytest.mark.slow
def test_a_row_naming_another_jobs_file_is_downloaded_again(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    """As an older dubrunner left it: `ep:1` and `ep_1` both recorded at `ep_1.mp4`."""
    size = 50_000
    emulator.update(complete_after=0.05, output_bytes=size)
    manifest = _manifest(tmp_path / "m.yaml", ("ep:1", "ep_1"))
    assert run_cli(["submit", str(manifest), "--wait", "--interval", "0.1"], env).code == 0
    out = tmp_path / "out"
    shared = out / "b" / "ep_1.mp4"
    shared.parent.mkdir(parents=True)
    (theirs,) = db_rows(db, "SELECT request_id FROM jobs WHERE reference_id = 'ep_1'")[0]
    shared.write_bytes(output_content(theirs, size))
    db_rows(
        db,
        "UPDATE jobs SET download_state = 'downloaded', local_path = ?, size_bytes = ?, sha256 = ?",
        str(shared),
        size,
        hashlib.sha256(shared.read_bytes()).hexdigest(),
    )
    r = run_cli(["fetch", "--out", str(out)], env)
    assert r.code == 0, r.err
    assert "1 downloaded" in r.err and "1 already there" in r.err
    paths = _assert_each_row_has_its_own_output(db, size)
    assert shared in paths and len(set(paths)) == 2


@pytest.mark.slow
def test_a_file_at_the_final_name_is_adopted_only_when_whole(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    size = 40_000
    emulator.update(complete_after=0.05, output_bytes=size)
    manifest = write_manifest(tmp_path / "m.yaml", 2)
    assert run_cli(["submit", str(manifest), "--wait", "--interval", "0.1"], env).code == 0
    out = tmp_path / "out" / "b"
    out.mkdir(parents=True)
    # A stray short file where job 0's output goes; job 1's own output renamed into place just
    # before a crash (the row was never told).
    (out / "b-ep00000.mp4").write_bytes(b"not this job's video")
    (own,) = db_rows(db, "SELECT request_id FROM jobs WHERE reference_id = 'b-ep00001'")[0]
    (out / "b-ep00001.mp4").write_bytes(output_content(own, size))
    r = run_cli(["fetch", "--out", str(out.parent)], env)
    assert r.code == 0, r.err
    assert "2 downloaded" in r.err
    _assert_each_row_has_its_own_output(db, size)


@pytest.fixture(params=["b-ep00000.mp4.part", "b-ep00000.mp4"])
def held(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BinaryIO]:
    """Job 0's partial file, or its output just renamed into place and not yet recorded, locked
    as another fetch process holds it (closing the file lets go)."""
    path = tmp_path / "out" / "b" / request.param
    path.parent.mkdir(parents=True)
    with path.open("ab") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield f


@pytest.mark.slow
def test_a_file_locked_by_another_fetch_is_waited_for_and_taken_over_when_let_go(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path, held: BinaryIO
) -> None:
    # Before: the fetch left the job to the other process and exited 1 (found by an outside
    # attack: coordinators fetching at once all exited 1, every file there in the end).
    _completed(emulator, env, tmp_path, 2)
    fetch = start(["fetch", "--out", str(tmp_path / "out")], env)
    sql = "SELECT reference_id, download_state FROM jobs ORDER BY id"
    deadline = time.monotonic() + 30
    while db_rows(db, sql) != [("b-ep00000", None), ("b-ep00001", "downloaded")]:
        assert time.monotonic() < deadline and fetch.poll() is None, db_rows(db, sql)
        time.sleep(0.05)
    time.sleep(1.0)
    assert fetch.poll() is None  # waiting for the other process
    assert Path(held.name).stat().st_size == 0  # and not writing its file
    held.close()  # the other process lets go without finishing: this one takes the job over
    _, err = fetch.communicate(timeout=60)
    assert fetch.returncode == 0, err
    assert "2 downloaded" in err and "0 failed" in err
    assert re.search(r"b-ep00000: waiting: .*another dubrunner process", err), err
    assert db_rows(db, sql) == [("b-ep00000", "downloaded"), ("b-ep00001", "downloaded")]
    assert emulator.stats.downloads == 2


@pytest.mark.slow
def test_a_fetch_that_holds_a_file_and_writes_nothing_is_not_waited_for_ever(
    emulator: Emulator,
    env: dict[str, str],
    db: Database,
    tmp_path: Path,
    held: BinaryIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _completed(emulator, env, tmp_path, 2)
    monkeypatch.setattr(fetcher_module, "BUSY_STALL", 1.0)
    store = Store(db.url)
    try:
        started = time.monotonic()
        ending = fetch(store, None, tmp_path / "out", 4, FakeUi())
    finally:
        store.close()
    assert 1.0 < time.monotonic() - started < 30
    assert ending.code == 1, ending
    assert ending.sentence.endswith(
        "; 1 being downloaded by another dubrunner fetch (b-ep00000), which has written nothing "
        "for 1 s — run fetch again once it has ended"
    ), ending.sentence
    assert "1 downloaded" in ending.sentence
    assert emulator.stats.downloads == 1


@pytest.mark.slow
def test_two_fetches_at_once_download_each_output_once(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    size = 2_000_000  # two seconds a download: the second fetch starts well before the end
    _completed(emulator, env, tmp_path, 3)
    emulator.update(output_bytes=size, output_rate=1_000_000)
    out = tmp_path / "out"
    first = start(["fetch", "--out", str(out)], env)
    deadline = time.monotonic() + 30
    while not any(p.stat().st_size for p in out.rglob("*.part")):
        assert time.monotonic() < deadline and first.poll() is None, "the first fetch never wrote"
        time.sleep(0.02)
    second = start(["fetch", "--out", str(out)], env)
    errs = []
    for proc in (first, second):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err  # the second waited for what the first was writing
        assert "Traceback" not in err and "internal error" not in err, err
        errs.append(err)
    assert "another dubrunner process is downloading it" in errs[1]
    assert "0 downloaded" in errs[1] and "3 already there" in errs[1], errs[1]
    assert emulator.stats.downloads == 3
    paths = _assert_each_row_has_its_own_output(db, size)
    assert _files(out) == sorted(paths)


def _fetch_writing(
    emulator: Emulator, env: dict[str, str], tmp_path: Path, size: int, past: int = 0
) -> tuple[subprocess.Popen[str], Path]:
    """One job, submitted and done; a fetch of its slow output (500 kB/s) started and seen to
    have written more than `past` bytes of its part. Returns the fetch and the part's path."""
    _completed(emulator, env, tmp_path, 1)
    emulator.update(output_bytes=size, output_rate=500_000)
    part = tmp_path / "out" / "b" / "b-ep00000.mp4.part"
    proc = start(["fetch", "--out", str(tmp_path / "out")], env)
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size > past):
        assert time.monotonic() < deadline and proc.poll() is None, "the fetch never wrote"
        time.sleep(0.02)
    return proc, part


@pytest.mark.slow
def test_a_part_removed_while_written_is_never_renamed_into_place(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    """Found by an outside attack: the part removed while one fetch wrote it and another waited
    for it. The waiting one started a part of its own at the name; the first renamed that
    half-written file into place and recorded its SHA-256: exit 0, a truncated output."""
    size = 2_000_000
    out = tmp_path / "out"
    first, part = _fetch_writing(emulator, env, tmp_path, size)
    second = start(["fetch", "--out", str(out)], env)
    time.sleep(1.0)  # the second is waiting for the first
    part.unlink()
    for proc in (first, second):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "internal error" not in err, err
    _assert_each_row_has_its_own_output(db, size)  # whole, and the SHA-256 of what is there
    assert not list(out.rglob("*.part"))


@pytest.mark.slow
def test_a_part_cut_while_written_is_started_over_not_resumed(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    """Found by an outside attack: the part truncated mid-download; the bytes after went to its
    start (append mode), the short file was resumed by a range, and a file of the right length
    but shifted bytes was recorded, exit 0."""
    size = 2_000_000
    proc, part = _fetch_writing(emulator, env, tmp_path, size, past=600_000)
    os.truncate(part, 0)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    _assert_each_row_has_its_own_output(db, size)


@pytest.mark.slow
def test_outputs_moved_away_as_soon_as_they_are_there_end_no_run(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    """A folder watcher moving each output away the moment it has its final name: the fetch
    hashed it by name after the rename, met FileNotFoundError, "internal error", and stopped
    (found by an outside attack)."""
    size, n = 3_000_000, 30
    _completed(emulator, env, tmp_path, n)
    emulator.update(output_bytes=size)
    out, moved = tmp_path / "out", tmp_path / "moved"
    (out / "b").mkdir(parents=True)
    moved.mkdir()
    done = threading.Event()

    def mover() -> None:
        while not done.is_set():
            for path in (out / "b").glob("*.mp4"):
                with contextlib.suppress(FileNotFoundError):
                    path.rename(moved / path.name)

    thread = threading.Thread(target=mover, daemon=True)
    thread.start()
    try:
        result = run_cli(["fetch", "--out", str(out)], env)
    finally:
        done.set()
        thread.join(10)
    assert result.code == 0, result.err
    assert f"{n} downloaded" in result.err, result.err
    rows = db_rows(db, "SELECT request_id, sha256 FROM jobs ORDER BY id")
    for request_id, sha in rows:
        assert sha == hashlib.sha256(output_content(request_id, size)).hexdigest()
    assert len(list(moved.glob("*.mp4"))) + len(list((out / "b").glob("*.mp4"))) == n


@pytest.mark.slow
def test_a_failure_held_back_is_not_written_over_another_fetchs_download(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    _completed(emulator, env, tmp_path, 1)
    store = Store(db.url)
    try:
        (stale,) = store.fetch_targets(None, 0, 10)  # as read before another fetch's download
        assert run_cli(["fetch", "--out", str(tmp_path / "out")], env).code == 0
        late = Fetcher(store, tmp_path / "out", None)
        late._failed(stale, "refused 3 times (held until the storage served something)", 5)
    finally:
        store.close()
    assert (late.report.failed, late.report.skipped) == (0, 1)
    _assert_each_row_has_its_own_output(db, 64 * 1024)


@pytest.mark.slow
def test_two_threads_never_share_a_part(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    """The same job handed to two threads of one fetch: one downloads it, the other leaves it."""
    size = 1_000_000
    _completed(emulator, env, tmp_path, 1)
    emulator.update(output_bytes=size, output_rate=2_000_000)
    store = Store(db.url)
    try:
        (target,) = store.fetch_targets(None, 0, 10)
        fetcher = Fetcher(store, tmp_path / "out", None, concurrency=2)
        threads = [threading.Thread(target=fetcher._fetch_one, args=(target,)) for _ in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        store.close()
    assert emulator.stats.downloads == 1
    report = fetcher.report
    assert (report.downloaded, report.busy, report.failed) == (1, 1, 0)
    _assert_each_row_has_its_own_output(db, size)


# -- a hostile output server: what a resumed download may trust ------------------------------

SIZE = 1_000_000
CUT = 600_000  # the first answer stops here: more than one read buffer, less than the file
V1 = hashlib.sha256(b"v1").digest() * (SIZE // 32)
V2 = hashlib.sha256(b"v2").digest() * (SIZE // 32)


class _OutputServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, behaviour: str, sidecar: Path) -> None:
        super().__init__(("127.0.0.1", 0), _OutputHandler)
        self.behaviour = behaviour
        self.sidecar = sidecar
        self.requests: list[dict[str, str]] = []
        self.sidecar_seen: list[str | None] = []
        self.changed = False  # from the ranged request on, "new_version" serves V2


class _OutputHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _OutputServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes, etag: str, content_range: str | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        if content_range is not None:
            self.send_header("Content-Range", content_range)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append({k.lower(): v for k, v in self.headers.items()})
        ranged = self.headers.get("Range")
        if len(srv.requests) == 1:  # the whole file announced, then the connection drops
            self.send_response(200)
            self.send_header("Content-Length", str(SIZE))
            self.send_header("ETag", '"v1"')
            self.end_headers()
            self.wfile.write(V1[:CUT])
            self.wfile.flush()
            self.close_connection = True
            return
        if not ranged:
            body, etag = (V2, '"v2"') if srv.changed else (V1, '"v1"')
            return self._answer(200, body, etag, None)
        try:
            srv.sidecar_seen.append(srv.sidecar.read_text())
        except OSError:
            srv.sidecar_seen.append(None)
        start = int(ranged.removeprefix("bytes=").removesuffix("-"))
        b = srv.behaviour
        if b == "206_from_zero":  # asked for the rest, sends it all
            self._answer(206, V1, '"v1"', f"bytes 0-{SIZE - 1}/{SIZE}")
        elif b == "206_other_total":  # the file on the server is not the one we started
            longer = V1 + b"x" * 100
            self._answer(206, longer[start:], '"v1"', f"bytes {start}-{SIZE + 99}/{SIZE + 100}")
        elif b == "206_unreadable_range":
            self._answer(206, V1, '"v1"', "bytes */*")
        elif b == "206_new_version":  # ignores If-Range: the rest of another version
            srv.changed = True
            self._answer(206, V2[start:], '"v2"', f"bytes {start}-{SIZE - 1}/{SIZE}")
        elif b == "200_whole":  # no ranges here: the whole file again
            self._answer(200, V1, '"v1"', None)
        else:
            raise AssertionError(b)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("behaviour", "version", "requests"),
    [
        ("206_from_zero", "v1", 3),
        ("206_other_total", "v1", 3),
        ("206_unreadable_range", "v1", 3),
        ("206_new_version", "v2", 3),
        ("200_whole", "v1", 2),
    ],
)
def test_a_resume_keeps_only_the_bytes_it_asked_for(
    emulator: Emulator,
    env: dict[str, str],
    db: Database,
    tmp_path: Path,
    behaviour: str,
    version: str,
    requests: int,
) -> None:
    expected = V2 if version == "v2" else V1
    _completed(emulator, env, tmp_path, 1)
    out = tmp_path / "out"
    final = out / "b" / "b-ep00000.mp4"
    server = _OutputServer(behaviour, final.with_name(final.name + ".part.json"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/out/b-ep00000.mp4?sig=SECRET-SIG"
        db_rows(db, "UPDATE jobs SET output_url = ?", url)
        r = run_cli(["fetch", "--out", str(out)], env)
    finally:
        server.shutdown()
        server.server_close()
    assert r.code == 0, r.err
    assert "1 downloaded" in r.err
    if behaviour == "200_whole":
        assert "the server sent the whole file again" in r.err
    else:
        assert "starting the download over: the server resumed with" in r.err
    assert final.read_bytes() == expected  # never a doubled or spliced file
    assert db_rows(db, "SELECT sha256, size_bytes FROM jobs") == [
        (hashlib.sha256(expected).hexdigest(), SIZE)
    ]
    assert _files(out) == [final]
    assert len(server.requests) == requests
    # The cut left every byte received: the resume asks for the rest, of that version only.
    resume = server.requests[1]
    assert (resume.get("range"), resume.get("if-range")) == (f"bytes={CUT}-", '"v1"')
    assert "range" not in server.requests[-1] or requests == 2
    # The sidecar knew the output's path and length, never its signature.
    (seen,) = server.sidecar_seen
    assert seen is not None and "/out/b-ep00000.mp4" in seen and str(SIZE) in seen
    assert "SECRET" not in seen


@pytest.mark.slow
@pytest.mark.parametrize("sidecar", [None, "another output"])
def test_a_partial_file_of_unknown_origin_is_not_continued(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path, sidecar: str | None
) -> None:
    """A part without its sidecar (as older versions left them, possibly another job's bytes),
    or started from another output URL of this job: downloaded from the start."""
    size = 50_000
    emulator.update(complete_after=0.05, output_bytes=size)
    manifest = write_manifest(tmp_path / "m.yaml", 1)
    assert run_cli(["submit", str(manifest), "--wait", "--interval", "0.1"], env).code == 0
    part = tmp_path / "out" / "b" / "b-ep00000.mp4.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 20_000)
    if sidecar is not None:
        info = {"url_path": "/api/outputs/older.mp4", "ext": ".mp4", "total": size}
        part.with_name(part.name + ".json").write_text(json.dumps(info))
    r = run_cli(["fetch", "--out", str(tmp_path / "out")], env)
    assert r.code == 0, r.err
    assert "starting the download over" in r.err
    assert emulator.stats.range_requests == 0
    _assert_each_row_has_its_own_output(db, size)
    assert _files(tmp_path / "out") == [part.with_name("b-ep00000.mp4")]


class _PageServer(ThreadingHTTPServer):
    """Storage behind a portal: answers 200 with a login page (or JSON) instead of the video."""

    daemon_threads = True

    def __init__(self, behaviour: str) -> None:
        super().__init__(("127.0.0.1", 0), _PageHandler)
        self.behaviour = behaviour
        self.hits = 0


class _PageHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _PageServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits += 1
        b = self.server.behaviour
        if b == "html":
            body, ctype = b"<!DOCTYPE html><html><body>Please sign in</body></html>", "text/html"
        elif b == "json_as_video":  # the headers lie; the body says what it is
            body, ctype = b'{"error": "signature expired"}', "video/mp4"
        else:
            raise AssertionError(b)
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.slow
@pytest.mark.parametrize("behaviour", ["html", "json_as_video"])
def test_a_page_served_instead_of_the_video_is_never_kept(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path, behaviour: str
) -> None:
    # Found by an outside attack: a login page (or a JSON error) answered with 200 was kept as
    # the .mp4, recorded downloaded with its own SHA-256, exit 0. It is taken as a refused URL:
    # the API is asked for a fresh one, whose video is what ends on disk.
    _completed(emulator, env, tmp_path, 1)
    server = _PageServer(behaviour)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/out/b-ep00000.mp4"
        db_rows(db, "UPDATE jobs SET output_url = ?", url)
        out = tmp_path / "out"
        r = run_cli(["fetch", "--out", str(out)], env)
    finally:
        server.shutdown()
        server.server_close()
    assert r.code == 0, r.err
    assert server.hits == 1
    [final] = _files(out)
    assert final.read_bytes()[4:8] == b"ftyp"  # the emulator's video, from the fresh URL
    [(sha,)] = db_rows(db, "SELECT sha256 FROM jobs")
    assert sha == hashlib.sha256(final.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_fetch_into_another_folder_downloads_there(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    # Found by an outside attack: `fetch --out B` after `fetch --out A` said "3 already there
    # ... into B" with exit 0, and B did not exist.
    _completed(emulator, env, tmp_path, 3)
    a, b = tmp_path / "A", tmp_path / "B"
    assert run_cli(["fetch", "--out", str(a)], env).code == 0
    again = run_cli(["fetch", "--out", str(a)], env)
    assert again.code == 0 and "3 already there" in again.err
    other = run_cli(["fetch", "--out", str(b)], env)
    assert other.code == 0 and "3 downloaded" in other.err, other.err
    assert sorted(p.name for p in _files(b)) == sorted(p.name for p in _files(a))
    for p in _files(b):
        assert p.read_bytes() == (a / "b" / p.name).read_bytes()
