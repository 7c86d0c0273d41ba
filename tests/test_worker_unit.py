"""The worker's decisions as they reach the job table: a real SQLite file, the API faked in
process (httpx.MockTransport), no subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dubrunner.governor import Governor
from dubrunner.records import JobSpec
from dubrunner.store import Store
from dubrunner.worker import RunReport, Worker, WorkerOptions
from tests.fakeapi import FakeApi, client_for

OPTIONS = WorkerOptions(
    concurrency=2, max_attempts=3, backoff_base=0.001, backoff_max=0.01, lookup_grace=0.2
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "jobs.db"))
    s.load(
        "b",
        [
            JobSpec(f"r{i}", f"https://v.test/{i}.mp4", f"https://a.test/{i}.wav", False, i)
            for i in range(4)
        ],
        "m.yaml",
    )
    yield s
    s.close()


def work(store: Store, fake: FakeApi, *modes: str) -> RunReport:
    fake.modes.extend(modes)
    with client_for(fake) as api:
        worker = Worker(store, api, Governor(None, OPTIONS.concurrency), OPTIONS, "b")
        return worker.run()


def rows(store: Store) -> dict[str, tuple[str, str | None, bool]]:
    return {r.reference_id: (r.state, r.request_id, r.lookup_owed) for r in store.rows("b")}


def assert_once(store: Store, fake: FakeApi) -> None:
    for ref, (state, request_id, _) in rows(store).items():
        created = fake.created(ref)
        assert len(created) == 1, (ref, created)
        assert (state, request_id) == ("submitted", created[0].id)


def test_every_job_once(store: Store) -> None:
    fake = FakeApi()
    report = work(store, fake)
    assert (report.submitted, report.failed, report.requests) == (4, 0, 4)
    assert_once(store, fake)


# gzip_garbage: found by an outside attack (a traceback and "internal error" stopped the batch).
@pytest.mark.parametrize("mode", ["lost", "500_created", "odd_id", "gzip_garbage"])
def test_a_post_that_may_have_landed_is_found_not_resent(store: Store, mode: str) -> None:
    fake = FakeApi()
    report = work(store, fake, mode)
    assert report.found_by_lookup == 1
    assert_once(store, fake)


def test_a_200_saying_token_limit_halts_and_is_looked_up_on_resume(store: Store) -> None:
    fake = FakeApi()
    report = work(store, fake, "200_token_limit_created")
    assert report.halt_message == "token limit reached"
    [halted] = [r for r in store.rows("b") if r.state == "halted"]
    assert halted.lookup_owed  # its request was created after all
    store.reset_halted("b")
    report = work(store, fake)
    assert report.found_by_lookup == 1
    assert_once(store, fake)


def test_without_a_list_route_the_request_is_asked_for_by_reference_id(store: Store) -> None:
    # Found by an outside attack: a list endpoint answering 404 was retried until the job
    # failed, although GET requests/{reference_id} would have found the request.
    fake = FakeApi(list_missing=True)
    report = work(store, fake, "lost")
    assert report.found_by_lookup == 1
    assert_once(store, fake)


def test_a_list_that_does_not_show_the_request_yet_is_not_proof_of_absence(store: Store) -> None:
    # Found by an outside attack: the filtered list lagged behind (a search index) while GET
    # requests/{reference_id} already returned the request; the job was sent again (paid twice).
    fake = FakeApi(list_blind=True)
    report = work(store, fake, "lost")
    assert report.found_by_lookup == 1
    assert_once(store, fake)


def test_a_late_request_is_looked_up_again_after_the_grace(store: Store) -> None:
    fake = FakeApi()
    report = work(store, fake, "504_late")
    assert report.deferred == 1 and report.found_by_lookup == 1
    assert_once(store, fake)


def test_not_created_is_sent_again_after_the_grace(store: Store) -> None:
    fake = FakeApi()
    report = work(store, fake, "500_not_created")
    assert report.deferred == 1
    assert_once(store, fake)


def test_x_should_retry_false_fails_the_job_with_a_look_up_owed(store: Store) -> None:
    fake = FakeApi()
    report = work(store, fake, "500_created_no_retry")
    assert report.failed == 1
    [failed] = [r for r in store.rows("b") if r.state == "failed"]
    assert failed.lookup_owed
    # `retry` puts it back; the look-up finds the request its POST did create.
    assert store.retry("b", ["failed"], None).pending == 1
    report = work(store, fake)
    assert report.found_by_lookup == 1
    assert_once(store, fake)


def test_retries_run_out_and_the_job_fails(store: Store) -> None:
    fake = FakeApi()
    report = work(store, fake, "500_not_created_no_retry", "429", "429", "429")
    assert report.failed == 1 and report.submitted == 3
    failed = [r for r in store.rows("b") if r.state == "failed"]
    assert len(failed) == 1 and failed[0].error == "odd"


def test_a_token_limit_halts_the_batch(store: Store) -> None:
    fake = FakeApi()
    report = work(store, fake, "token_limit")
    assert report.halt_message == "token limit reached"
    [halted] = [r for r in store.rows("b") if r.state == "halted"]
    assert not halted.lookup_owed and fake.created(halted.reference_id) == []
    assert store.counts().get("pending", 0) + store.counts().get("submitted", 0) == 3
    store.reset_halted("b")
    work(store, fake)
    assert_once(store, fake)
