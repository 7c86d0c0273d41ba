"""Polling as the API really is: lower-case (or any case) statuses, unknown words kept and named,
finished without an output_url, requests the API no longer knows, a poll against the wrong API,
and a round that walks the list instead of asking for each job."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dubrunner.api import ApiClient, Credentials
from dubrunner.cli import cli
from dubrunner.constants import EXIT_INCOMPLETE, EXIT_OK
from dubrunner.emulator import Emulator, EmulatorConfig
from dubrunner.errors import Lookup, choose_request
from dubrunner.governor import Governor
from dubrunner.health import describe_view
from dubrunner.manifest import Manifest
from dubrunner.manifest import load as load_manifest
from dubrunner.poller import interpret
from dubrunner.sessions import Polling, poll, submit
from dubrunner.states import State
from dubrunner.store import Store
from dubrunner.worker import WorkerOptions
from tests.conftest import (
    BOTH_DATABASES,
    OPTIONS,
    TOKEN,
    Database,
    FakeUi,
    clean_env,
    db_rows,
    manifest_of,
    run_cli,
    states,
    write_manifest,
)

FAST = Polling(interval=0.05, timeout=30)


def manifest_of_batch(tmp_path: Path, batch: str, n: int) -> Manifest:
    return load_manifest(write_manifest(tmp_path / f"{batch}.yaml", n, batch=batch))


def remote(db: Database) -> list[tuple[str, str | None, str | None]]:
    return db_rows(db, "SELECT state, remote_status, last_error FROM jobs ORDER BY id")


@pytest.mark.parametrize("upper_case", [False, True])
def test_statuses_in_either_case(
    emulator: Emulator,
    store: Store,
    api: ApiClient,
    db: Database,
    tmp_path: Path,
    upper_case: bool,
) -> None:
    emulator.update(complete_after=0.05, upper_case=upper_case)
    m = manifest_of(tmp_path, 3, failing=frozenset({1}))
    ending = submit(store, api, m, OPTIONS, FakeUi(), wait=True, polling=FAST)
    assert ending.code == EXIT_INCOMPLETE
    assert ending.sentence == "batch b: 2 completed, 1 failed remotely, 0 still processing"
    word = str.upper if upper_case else str.lower
    assert remote(db) == [
        ("completed", word("completed"), None),
        ("failed", word("failed"), "failed remotely: no face found in the video"),
        ("completed", word("completed"), None),
    ]


def test_an_unknown_status_is_kept_taken_as_running_and_named(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.0, status_words={"completed": "queued_for_render"})
    assert submit(store, api, manifest_of(tmp_path, 3), OPTIONS, FakeUi()).code == EXIT_OK
    ending = poll(store, api, "b", OPTIONS, FakeUi(), wait=False)
    assert ending.code == EXIT_OK
    assert ending.sentence == "batch b: 0 completed, 0 failed remotely, 3 still processing"
    assert ending.details == ("3 jobs report status 'queued_for_render', taken as still running",)
    assert states(db) == {"processing": 3}
    assert {row[1] for row in remote(db)} == {"queued_for_render"}
    emulator.update(status_words={})
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=True, polling=FAST).code == EXIT_OK
    assert states(db) == {"completed": 3}


def test_a_request_without_a_status_is_taken_as_running_and_said(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    # Before: a status null (or left out) kept the jobs open round after round, and the end of
    # the poll said nothing of why.
    emulator.update(complete_after=0.0, status_words={"completed": None})
    assert submit(store, api, manifest_of(tmp_path, 3), OPTIONS, FakeUi()).code == EXIT_OK
    ending = poll(store, api, "b", OPTIONS, FakeUi(), wait=False)
    assert ending.code == EXIT_OK
    assert ending.sentence == "batch b: 0 completed, 0 failed remotely, 3 still processing"
    assert ending.details == ("3 jobs' requests come without a status, taken as still running",)
    emulator.update(status_words={})
    ending = poll(store, api, "b", OPTIONS, FakeUi(), wait=True, polling=FAST)
    assert ending.code == EXIT_OK and ending.details == ()
    assert states(db) == {"completed": 3}


def test_a_round_reads_the_list_and_writes_only_what_changed(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=3600)
    assert submit(store, api, manifest_of(tmp_path, 150), OPTIONS, FakeUi()).code == EXIT_OK
    before = emulator.requests_endpoint_calls()
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=False).code == EXIT_OK
    assert emulator.requests_endpoint_calls() - before == 2  # two pages of 100, no GET
    assert states(db) == {"processing": 150}
    written = db_rows(db, "SELECT updated_at FROM jobs ORDER BY id")
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=False).code == EXIT_OK
    assert db_rows(db, "SELECT updated_at FROM jobs ORDER BY id") == written


def test_submit_wait_fetch_keeps_one_rate_budget(
    emulator: Emulator,
    store: Store,
    api: ApiClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[Governor] = []
    real = WorkerOptions.governor

    def counted(self: WorkerOptions, store: Store, api: ApiClient) -> Governor:
        made.append(real(self, store, api))
        return made[-1]

    monkeypatch.setattr(WorkerOptions, "governor", counted)
    emulator.update(complete_after=0.0, output_bytes=1000)
    m = manifest_of(tmp_path, 2)
    ending = submit(store, api, m, OPTIONS, FakeUi(), polling=FAST, fetch_into=tmp_path / "o")
    assert ending.code == EXIT_OK
    assert len(made) == 1  # submits, polls and fresh output URLs under one governor


def test_requests_of_others_newer_than_ours_are_walked_past(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=3600)
    assert submit(store, api, manifest_of(tmp_path, 150), OPTIONS, FakeUi()).code == EXIT_OK
    with emulator.lock:  # another client of the account, since
        for i in range(1000):
            emulator._create(f"other-{i}", "https://o.test/v.mp4", "https://o.test/a.wav", False)
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=False).code == EXIT_OK
    assert states(db) == {"processing": 150}
    # 12 pages of the list (1,150 requests), not 7 pages and then 150 GETs.
    assert (emulator.stats.by_endpoint["list"], emulator.stats.by_endpoint.get("get", 0)) == (12, 0)


def test_a_list_that_ignores_its_offset_is_left_for_gets(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=3600, list_ignores_offset=True)
    assert submit(store, api, manifest_of(tmp_path, 150), OPTIONS, FakeUi()).code == EXIT_OK
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=False).code == EXIT_OK
    assert states(db) == {"processing": 150}
    assert (emulator.stats.by_endpoint["list"], emulator.stats.by_endpoint["get"]) == (2, 50)


def test_a_failing_page_of_the_list_is_tried_again_and_a_missing_list_is_done_without(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=3600)
    assert submit(store, api, manifest_of(tmp_path, 5), OPTIONS, FakeUi()).code == EXIT_OK
    emulator.update(list_failures=2)
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=False).code == EXIT_OK
    assert (emulator.stats.by_endpoint["list"], emulator.stats.by_endpoint.get("get", 0)) == (3, 0)
    assert states(db) == {"processing": 5}
    emulator.update(list_missing=True, complete_after=0.0)
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=True, polling=FAST).code == EXIT_OK
    assert emulator.stats.by_endpoint["get"] == 5  # one GET each: the list is not there
    assert emulator.stats.by_endpoint["list"] == 4  # asked once, then not again this run
    assert states(db) == {"completed": 5}


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("failed", State.FAILED),
        ("Failed", State.FAILED),
        ("completed", State.COMPLETED),
        ("success", State.PROCESSING),  # the generate answer's "created"
        ("SUCCESS", State.PROCESSING),
        ("queued_for_render", State.PROCESSING),
    ],
)
def test_what_a_status_word_means(status: str, state: State) -> None:
    assert interpret({"status": status, "output_url": "https://o.test/x.mp4"}).state is state


@pytest.mark.parametrize("status", [None, True, 42, 1.5, {}, ["completed"], ""])
def test_a_status_that_is_no_word_is_no_status(status: object) -> None:
    # Before: `true` was kept as status 'True' (Python's spelling), 42 as '42'.
    view = interpret({"status": status, "output_url": "https://o.test/x.mp4"})
    assert (view.status, view.state) == (None, State.PROCESSING)


def test_finished_without_an_output_url_is_polled_again_then_flagged() -> None:
    view = {"status": "completed", "output_url": None}
    first = interpret(view, None, grace=60, now=1000.0)
    assert (first.state, first.done_at) == (State.PROCESSING, 1000.0)
    assert first.error == "the API said 'completed' without an output_url"
    later = interpret(view, first.done_at, grace=60, now=1059.0)
    assert (later.state, later.done_at) == (State.PROCESSING, 1000.0)
    flagged = interpret(view, first.done_at, grace=60, now=1060.0)
    assert flagged.state is State.FAILED
    assert flagged.last_error == "the API said 'completed' without an output_url for 60 s"
    whole = interpret({**view, "output_url": "https://o.test/x.mp4"}, 1000.0, grace=60, now=1e9)
    assert (whole.state, whole.done_at) == (State.COMPLETED, None)


def test_a_poll_waits_for_the_output_url_then_gives_up(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.0, hide_output=True)
    assert submit(store, api, manifest_of(tmp_path, 2), OPTIONS, FakeUi()).code == EXIT_OK
    once = poll(store, api, "b", OPTIONS, FakeUi(), wait=False)
    assert once.sentence == "batch b: 0 completed, 0 failed remotely, 2 still processing"
    assert states(db) == {"processing": 2}
    polling = Polling(interval=0.05, timeout=30, output_grace=0.3)
    ending = poll(store, api, "b", OPTIONS, FakeUi(), wait=True, polling=polling)
    assert ending.code == EXIT_INCOMPLETE
    assert (
        remote(db)
        == [("failed", "completed", "the API said 'completed' without an output_url for 0.3 s")] * 2
    )


def test_a_request_the_api_forgot_ends_failed_after_some_rounds(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=3600)
    assert submit(store, api, manifest_of(tmp_path, 3), OPTIONS, FakeUi()).code == EXIT_OK
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=False).code == EXIT_OK
    forgotten = db_rows(db, "SELECT request_id FROM jobs WHERE reference_id = 'b-ep00001'")[0][0]
    assert emulator.forget([forgotten]) == 1
    # A request answered "not found" within a minute of its creation may only not be readable
    # everywhere yet: it is counted, never ended.
    polling = Polling(interval=0.01, timeout=0.3, gone_after=1)
    young = poll(store, api, "b", OPTIONS, FakeUi(), wait=True, polling=polling)
    assert young.sentence.startswith("timed out waiting;")
    assert db_rows(db, "SELECT state FROM jobs WHERE request_id = ?", forgotten) == [
        ("processing",)
    ]
    db.rows("UPDATE jobs SET remote_missing = 0, submitted_at = '2026-01-01 00:00:00'")
    ui = FakeUi()
    once = poll(store, api, "b", OPTIONS, ui, wait=False)
    assert once.sentence == (
        "batch b: 0 completed, 0 failed remotely, 3 still processing (1 not found)"
    )
    emulator.update(complete_after=0.0)
    polling = Polling(interval=0.05, timeout=30, gone_after=3)
    ending = poll(store, api, "b", OPTIONS, FakeUi(), wait=True, polling=polling)
    assert ending.code == EXIT_INCOMPLETE
    assert ending.sentence == (
        "batch b: 2 completed, 0 failed remotely, 1 no longer known to the API, 0 still processing"
    )
    assert remote(db)[1] == (
        "failed",
        "not found",
        "the API no longer knows this request (not found in 3 polls)",
    )
    assert db_rows(db, "SELECT remote_missing FROM jobs ORDER BY id") == [(0,), (3,), (0,)]
    job_id = db_rows(db, "SELECT id FROM jobs WHERE request_id = ?", forgotten)[0][0]
    assert store.ended_requests(job_id) == frozenset({forgotten})


def test_a_poll_of_an_api_that_knows_none_of_the_jobs_halts_at_once(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.0)
    assert submit(store, api, manifest_of(tmp_path, 1), OPTIONS, FakeUi(), wait=True).code == 0
    emulator.update(complete_after=3600)
    other = Emulator(EmulatorConfig(tokens=(TOKEN,))).start()
    try:
        assert submit(store, api, manifest_of_batch(tmp_path, "c", 4), OPTIONS, FakeUi()).code == 0
        wrong = ApiClient(Credentials(TOKEN, None), other.base_url)
        started = time.monotonic()
        ending = poll(store, wrong, None, OPTIONS, FakeUi(), wait=True, polling=FAST)
        wrong.close()
        assert time.monotonic() - started < 20
        assert other.stats.by_endpoint["get"] == 5  # four jobs and one that ended, asked once
    finally:
        other.stop()
    assert ending.code == EXIT_INCOMPLETE and ending.is_error
    assert ending.sentence.startswith(
        f"the API at {other.base_url} knows none of the 4 job(s) polled ('not found' for each): "
        "check CHAMELAION_BASE_URL; all batches: 1 completed, 0 failed remotely, 4 still "
        "processing (4 not found)"
    )
    assert (
        db_rows(db, "SELECT state, remote_status, remote_missing FROM jobs WHERE batch = 'c'")
        == [("submitted", "not found", 0)] * 4
    )
    # The right API again: nothing was lost.
    assert poll(store, api, None, OPTIONS, FakeUi(), wait=False).code == EXIT_OK
    assert states(db) == {"completed": 1, "processing": 4}


def test_a_poll_that_reaches_no_api_halts_after_its_first_round(
    emulator: Emulator, store: Store, api: ApiClient, tmp_path: Path
) -> None:
    emulator.update(complete_after=3600)
    assert submit(store, api, manifest_of(tmp_path, 2), OPTIONS, FakeUi()).code == EXIT_OK
    nowhere = ApiClient(Credentials(TOKEN, None), "http://127.0.0.1:9/api/", read_timeout=2)
    ending = poll(store, nowhere, None, OPTIONS, FakeUi(), wait=True, polling=FAST)
    nowhere.close()
    assert ending.code == EXIT_INCOMPLETE
    # The same sentence as submit's (health.py), after the list's three tries.
    assert ending.sentence.startswith(
        "cannot connect to CHAMELAION_BASE_URL=http://127.0.0.1:9/api/: ConnectError"
    )
    assert ending.sentence.endswith("check CHAMELAION_BASE_URL (and the network), then poll again")


@pytest.mark.slow
def test_poll_wait_against_an_api_that_knows_none_of_the_demo_jobs_ends(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    """`make demo` leaves 5 jobs behind its stopped emulator; `poll --wait` against another."""
    emulator.update(complete_after=3600)
    manifest = write_manifest(tmp_path / "example.yaml", 5, batch="example")
    assert run_cli(["submit", str(manifest)], env).code == 0
    other = Emulator(EmulatorConfig(tokens=(TOKEN,))).start()
    try:
        moved = clean_env(**{**env, "CHAMELAION_BASE_URL": other.base_url})
        started = time.monotonic()
        r = run_cli(["poll", "--wait", "--interval", "0.5"], moved, timeout=60)
        assert time.monotonic() - started < 60
    finally:
        other.stop()
    assert r.code == 1, r.err
    assert "knows none of the 5 job(s) polled" in r.err and "CHAMELAION_BASE_URL" in r.err
    assert "Traceback" not in r.err
    shown = run_cli(["status", "--batch", "example", "--format", "json"], env)
    assert [job["remote_status"] for job in json.loads(shown.out)] == ["not found"] * 5


@pytest.mark.slow
@BOTH_DATABASES
def test_poll_wait_ends_a_forgotten_request_on_either_database(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=3600, status_words={"pending": "queued_for_render"})
    manifest = write_manifest(tmp_path / "m.yaml", 3)
    assert run_cli(["submit", str(manifest)], env).code == 0
    r = run_cli(["poll"], env)
    assert r.code == 0, r.err
    assert "3 jobs report status 'queued_for_render', taken as still running" in r.err
    forgotten = db_rows(db, "SELECT request_id FROM jobs WHERE reference_id = 'b-ep00002'")[0][0]
    emulator.forget([forgotten])
    db.rows("UPDATE jobs SET submitted_at = '2026-01-01 00:00:00'")
    emulator.update(complete_after=0.0)
    r = run_cli(["poll", "--wait", "--interval", "0.05", "--gone-after", "2"], env, timeout=60)
    assert r.code == 1, r.err
    assert "2 completed, 0 failed remotely, 1 no longer known to the API, 0 still processing" in (
        r.err
    )
    shown = run_cli(["status", "--format", "json"], env)
    jobs = {job["reference_id"]: job for job in json.loads(shown.out)}
    assert (jobs["b-ep00002"]["state"], jobs["b-ep00002"]["remote_status"]) == (
        "failed",
        "not found",
    )
    assert (
        jobs["b-ep00002"]["error"] == "the API no longer knows this request (not found in 2 polls)"
    )


def test_a_list_that_always_fails_while_the_gets_answer_is_no_outage(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=3600)
    assert submit(store, api, manifest_of(tmp_path, 5), OPTIONS, FakeUi()).code == EXIT_OK
    emulator.update(list_failures=1000, complete_after=0.0)
    ui = FakeUi()
    assert poll(store, api, "b", OPTIONS, ui, wait=True, polling=FAST).code == EXIT_OK
    assert states(db) == {"completed": 5}
    assert not any("API failing" in detail for _, detail in ui.updates)


def test_a_single_job_polled_through_an_outage_halts_after_the_outage_timeout(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    # One job: a round is few requests, yet three failures in a row are an outage all the same.
    emulator.update(complete_after=3600)
    assert submit(store, api, manifest_of(tmp_path, 1), OPTIONS, FakeUi()).code == EXIT_OK
    emulator.update(outage_from=time.time(), outage_until=time.time() + 3600)
    options = dataclasses.replace(OPTIONS, outage_timeout=2.0)
    started = time.monotonic()
    ui = FakeUi()
    ending = poll(store, api, "b", options, ui, wait=True, polling=FAST)
    assert time.monotonic() - started < 20
    assert ending.code == EXIT_INCOMPLETE and ending.is_error
    assert ending.sentence.startswith("the API has failed every request since ")
    assert "longer than --outage-timeout" in ending.sentence
    assert any("API failing since" in detail for _, detail in ui.updates)
    assert states(db) == {"submitted": 1}
    assert emulator.stats.outage_answers <= 12, emulator.stats.outage_answers  # probed, politely


def test_a_poll_round_against_a_failing_api_leaves_word_of_it_for_status(
    emulator: Emulator, store: Store, api: ApiClient, tmp_path: Path
) -> None:
    # Failed before: only workers kept the API's health; `status` after such a poll said nothing.
    emulator.update(complete_after=3600)
    assert submit(store, api, manifest_of(tmp_path, 6), OPTIONS, FakeUi()).code == EXIT_OK
    emulator.update(outage_from=time.time(), outage_until=time.time() + 3600)
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=False).code == EXIT_INCOMPLETE
    views = store.api_health(time.time() - 60)
    assert [view.condition for view in views] == ["outage"]
    said = describe_view(views[0])
    assert said is not None
    assert said.startswith(f"the API at {api.base_url} has been failing since "), said
    assert "HTTP 500 internal error" in said
    emulator.update(outage_until=0.0)
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=False).code == EXIT_OK
    assert [view.condition for view in store.api_health(time.time() - 60)] == ["healthy"]


def test_a_round_where_only_some_jobs_are_not_found_is_no_wrong_address(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    # Failed before: 3 jobs 'not found' and 2 whose GET failed this round made "the API knows
    # none of the 5 job(s) polled ('not found' for each): check CHAMELAION_BASE_URL".
    emulator.update(complete_after=3600)
    assert submit(store, api, manifest_of(tmp_path, 5), OPTIONS, FakeUi()).code == EXIT_OK
    ids = [row[0] for row in db_rows(db, "SELECT request_id FROM jobs ORDER BY id")]
    assert emulator.forget(ids[:3]) == 3
    emulator.update(list_missing=True, get_failing=ids[3:])
    ending = poll(store, api, "b", OPTIONS, FakeUi(), wait=False)
    assert "CHAMELAION_BASE_URL" not in ending.sentence, ending.sentence
    assert ending.sentence == (
        "batch b: 0 completed, 0 failed remotely, 5 still processing (3 not found)"
    )
    assert db_rows(db, "SELECT remote_missing FROM jobs ORDER BY id") == [(1,)] * 3 + [(0,)] * 2


def test_request_ids_match_whatever_their_case(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    # Failed before: the POST answered upper-case UUIDs, the list lower-case ones; no item
    # matched and every job was asked for by a GET of its own, every round.
    emulator.update(complete_after=0.0, upper_case_ids=True)
    assert submit(store, api, manifest_of(tmp_path, 5), OPTIONS, FakeUi()).code == EXIT_OK
    kept = [row[0] for row in db_rows(db, "SELECT request_id FROM jobs ORDER BY id")]
    assert all(request_id == request_id.upper() for request_id in kept)
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=False).code == EXIT_OK
    assert states(db) == {"completed": 5}
    assert (emulator.stats.by_endpoint["list"], emulator.stats.by_endpoint.get("get", 0)) == (1, 0)


@pytest.mark.parametrize("answered", [str.upper, str.lower])
def test_an_ended_request_is_history_whatever_the_case_of_its_id(
    answered: Callable[[str], str],
) -> None:
    request_id = "8f14e45f-ceea-467a-9af0-6a1c8d2e7b11"
    items: list[Mapping[str, Any]] = [
        {"id": request_id, "reference_id": "r", "created_at": "2026-01-01T00:00:00Z"}
    ]
    found = choose_request(items, "r", frozenset({answered(request_id)}))
    assert found.kind is Lookup.NOT_FOUND


def test_a_list_without_output_urls_is_completed_from_the_gets(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    # Failed before: the list's "completed" without an output_url was taken as the API's last
    # word; after --output-grace the jobs failed (and `retry --yes` would have paid again),
    # though a GET of each request gave its output_url.
    emulator.update(complete_after=0.0, list_hides_output=True)
    assert submit(store, api, manifest_of(tmp_path, 3), OPTIONS, FakeUi()).code == EXIT_OK
    polling = Polling(interval=0.05, timeout=30, output_grace=0.2)
    time.sleep(0.3)
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=True, polling=polling).code == EXIT_OK
    assert states(db) == {"completed": 3}
    assert all(url for (url,) in db_rows(db, "SELECT output_url FROM jobs"))
    assert emulator.stats.by_endpoint["get"] == 3  # one GET each, for the URL the list left out


def test_retry_polls_a_job_finished_without_an_output_url_again_and_never_sends_it(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    # Failed before: such a job (the API did the work: paid) was put back to pending by
    # `retry --yes` and sent, and paid, again; without --yes it was called "failed at the API".
    emulator.update(complete_after=0.0, hide_output=True)
    assert submit(store, api, manifest_of(tmp_path, 2), OPTIONS, FakeUi()).code == EXIT_OK
    polling = Polling(interval=0.05, timeout=30, output_grace=0.2)
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=True, polling=polling).code == 1
    assert states(db) == {"failed": 2}
    result = CliRunner().invoke(cli, ["retry", "--batch", "b", "--db", str(db.path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        "0 job(s) put back to pending; 2 the API finished without an output URL put back to "
        "polling (never sent again: the API did them) — `dubrunner poll` asks for their output"
    ), result.output
    assert states(db) == {"processing": 2}
    emulator.update(hide_output=False)
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=True, polling=polling).code == EXIT_OK
    assert states(db) == {"completed": 2}
    assert all(len(ids) == 1 for ids in emulator.accepted().values())  # each paid once
