"""The storage host failing as a whole is one batch-wide event for `fetch`, as the API failing is
for a submit: every output URL refused (403 even with fresh URLs) or the host refusing
connections stops the fetch with one sentence, and no job is recorded as failed (a later fetch
downloads them). One refused output among others served is that job's own failure."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dubrunner.api import ApiClient
from dubrunner.constants import EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE
from dubrunner.emulator import Emulator
from dubrunner.sessions import fetch, submit
from dubrunner.store import Store
from tests.conftest import (
    OPTIONS,
    Database,
    FakeUi,
    closed_port,
    db_rows,
    manifest_of,
    run_cli,
    write_manifest,
)


def _downloads(db: Database) -> list[tuple[str | None, str | None]]:
    return db_rows(db, "SELECT download_state, download_error FROM jobs ORDER BY id")


def _done(emulator: Emulator, store: Store, api: ApiClient, tmp_path: Path, n: int) -> None:
    emulator.update(complete_after=0.0, output_bytes=2000)
    assert submit(store, api, manifest_of(tmp_path, n), OPTIONS, FakeUi(), wait=True).code == 0


def test_storage_refusing_every_output_stops_the_fetch_with_one_sentence(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    # Failed before: eight downloads failed one by one, each recorded as the job's failure.
    _done(emulator, store, api, tmp_path, 8)
    emulator.update(storage_refuses=True)
    ending = fetch(store, None, tmp_path / "out", 2, FakeUi(), api)
    assert ending.code == EXIT_INCOMPLETE and ending.is_error
    host = emulator.base_url.removeprefix("http://").removesuffix("/api/")
    assert ending.sentence.startswith(
        f"the storage host {host} refused 3 downloads in a row (the last: HTTP 403 for the "
        "output URL, also with 2 fresh URL(s) from the API); stopped; 0 downloaded"
    ), ending.sentence
    assert ending.sentence.endswith(
        "8 left to fetch — run `dubrunner fetch` again once the storage serves them"
    ), ending.sentence
    assert _downloads(db) == [(None, None)] * 8  # none failed: fetchable later
    assert emulator.stats.by_endpoint["output"] <= 4 * 3  # a few jobs tried, not every one
    emulator.update(storage_refuses=False)
    again = fetch(store, None, tmp_path / "out", 2, FakeUi(), api)
    assert again.code == EXIT_OK, again
    assert again.sentence.startswith("8 downloaded")


def test_a_storage_host_refusing_connections_stops_the_fetch(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    port = closed_port()  # nothing listens on it
    emulator.update(output_host=f"127.0.0.1:{port}")
    _done(emulator, store, api, tmp_path, 5)
    ending = fetch(store, None, tmp_path / "out", 2, FakeUi(), api)
    assert ending.code == EXIT_INCOMPLETE and ending.is_error
    assert ending.sentence.startswith(
        f"the storage host 127.0.0.1:{port} refused 3 downloads in a row (the last: gave up "
        "after 3 tries: ConnectError"
    ), ending.sentence
    assert "5 left to fetch" in ending.sentence
    assert _downloads(db) == [(None, None)] * 5


def test_one_refused_output_among_others_served_fails_that_job_alone(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    _done(emulator, store, api, tmp_path, 6)
    refused = db_rows(db, "SELECT request_id FROM jobs WHERE reference_id = 'b-ep00003'")[0][0]
    emulator.update(refused_outputs=[refused])
    ending = fetch(store, None, tmp_path / "out", 2, FakeUi(), api)
    assert ending.code == EXIT_INCOMPLETE
    assert "storage host" not in ending.sentence
    assert ending.sentence.startswith("5 downloaded"), ending.sentence
    assert ", 1 failed, " in ending.sentence
    assert db_rows(
        db, "SELECT download_state, download_error FROM jobs WHERE request_id = ?", refused
    ) == [("failed", "HTTP 403 for the output URL, also with 2 fresh URL(s) from the API")]


@pytest.mark.slow
def test_fetch_against_refusing_storage_says_one_line_and_exits_1(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.0, output_bytes=2000)
    manifest = write_manifest(tmp_path / "m.yaml", 6)
    assert run_cli(["submit", str(manifest), "--wait", "--interval", "0.1"], env).code == 0
    emulator.update(storage_refuses=True)
    r = run_cli(["fetch", "--out", str(tmp_path / "out")], env)
    assert r.code == 1, r.err
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.err
    assert "refused 3 downloads in a row" in errors[0] and "6 left to fetch" in errors[0]
    assert "Traceback" not in r.err
    assert _downloads(db) == [(None, None)] * 6


def test_without_the_api_expired_urls_stop_the_fetch_saying_what_would_help(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(output_ttl=0.2)
    _done(emulator, store, api, tmp_path, 4)
    time.sleep(0.3)
    ending = fetch(store, None, tmp_path / "out", 1, FakeUi())
    assert ending.code == EXIT_INCOMPLETE and ending.is_error
    assert "refused 3 downloads in a row (the last: HTTP 403 for the output URL)" in (
        ending.sentence
    )
    assert ending.sentence.endswith(
        "4 left to fetch — run `dubrunner fetch` again once the storage serves them, with "
        "CHAMELAION_API_KEY set if the output URLs expired (fresh ones are then asked of the API)"
    ), ending.sentence
    assert _downloads(db) == [(None, None)] * 4
    assert fetch(store, None, tmp_path / "out", 2, FakeUi(), api).code == EXIT_OK


@pytest.mark.parametrize("n", [1, 2])
def test_storage_refusing_the_only_outputs_is_one_sentence_not_each_jobs_failure(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path, n: int
) -> None:
    # Failed before: fewer than 3 outputs never made "3 in a row"; each job's download was
    # recorded failed (found by an outside attack).
    _done(emulator, store, api, tmp_path, n)
    emulator.update(storage_refuses=True)
    ending = fetch(store, None, tmp_path / "out", 2, FakeUi(), api)
    assert ending.code == EXIT_INCOMPLETE and ending.is_error
    host = emulator.base_url.removeprefix("http://").removesuffix("/api/")
    assert ending.sentence.startswith(
        f"the storage host {host} served none of the outputs asked of it and refused {n} (the "
        "last: HTTP 403 for the output URL, also with 2 fresh URL(s) from the API); stopped; "
        "0 downloaded"
    ), ending.sentence
    assert f"{n} left to fetch — run `dubrunner fetch` again" in ending.sentence
    assert _downloads(db) == [(None, None)] * n
    emulator.update(storage_refuses=False)
    again = fetch(store, None, tmp_path / "out", 2, FakeUi(), api)
    assert again.code == EXIT_OK, again
    assert again.sentence.startswith(f"{n} downloaded")


def test_a_storage_host_unreachable_for_two_outputs_is_one_sentence(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    port = closed_port()  # nothing listens on it
    emulator.update(output_host=f"127.0.0.1:{port}")
    _done(emulator, store, api, tmp_path, 2)
    ending = fetch(store, None, tmp_path / "out", 2, FakeUi(), api)
    assert ending.code == EXIT_INCOMPLETE and ending.is_error
    assert ending.sentence.startswith(
        f"the storage host 127.0.0.1:{port} served none of the outputs asked of it and refused 2"
    ), ending.sentence
    assert _downloads(db) == [(None, None)] * 2


def test_one_refused_output_of_two_with_the_other_served_fails_that_job(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    _done(emulator, store, api, tmp_path, 2)
    refused = db_rows(db, "SELECT request_id FROM jobs WHERE reference_id = 'b-ep00001'")[0][0]
    emulator.update(refused_outputs=[refused])
    ending = fetch(store, None, tmp_path / "out", 1, FakeUi(), api)
    assert ending.code == EXIT_INCOMPLETE and "storage host" not in ending.sentence
    assert ending.sentence.startswith("1 downloaded") and ", 1 failed, " in ending.sentence
    assert _downloads(db)[1][0] == "failed"


def test_an_output_folder_that_cannot_be_written_is_refused_up_front(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    # Failed before: `--out /dev/null/x` marked every job's download failed, one line each.
    _done(emulator, store, api, tmp_path, 3)
    ending = fetch(store, None, Path("/dev/null/x"), 2, FakeUi(), api)
    assert ending.code == EXIT_USAGE and ending.is_error
    assert ending.sentence == (
        "cannot write into the folder /dev/null/x: Not a directory (--out); nothing fetched"
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b").write_bytes(b"a file where the batch's folder goes")
    ending = fetch(store, None, tmp_path / "out", 2, FakeUi(), api)
    assert ending.code == EXIT_USAGE and "cannot write into the folder" in ending.sentence
    ending = fetch(store, "b", tmp_path / "out", 2, FakeUi(), api)
    assert ending.code == EXIT_USAGE and f"{tmp_path}/out/b: File exists" in ending.sentence
    assert _downloads(db) == [(None, None)] * 3
    assert emulator.stats.downloads == 0
    (tmp_path / "out" / "b").unlink()
    assert fetch(store, "b", tmp_path / "out", 2, FakeUi(), api).code == EXIT_OK
    assert not [p for p in (tmp_path / "out" / "b").iterdir() if p.name.startswith(".dubrunner")]


@pytest.mark.slow
def test_fetch_into_a_folder_that_cannot_be_made_says_one_line_and_exits_2(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.0, output_bytes=2000)
    manifest = write_manifest(tmp_path / "m.yaml", 3)
    assert run_cli(["submit", str(manifest), "--wait", "--interval", "0.1"], env).code == 0
    r = run_cli(["fetch", "--out", "/dev/null/x"], env)
    assert r.code == EXIT_USAGE, r.err
    assert r.err.strip().splitlines() == [
        "error: cannot write into the folder /dev/null/x: Not a directory (--out); nothing fetched"
    ], r.err
    assert _downloads(db) == [(None, None)] * 3
