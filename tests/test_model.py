"""A model check of "never paid twice".

A hypothesis state machine drives the real store (a SQLite file) and real workers, step by step,
against an in-process fake API whose answers can be lost, arrive late in its list, be a 5xx
with or without the request created, carry or not `x-should-retry`, or give ids that are not
UUIDs. Between any two steps a worker may be killed (mid-request, after the server created the
request) or paused past its lease while another takes its job; manifests are re-loaded with
changes; the user retries, cancels and resumes. After every step:

- no reference_id has more requests at the API than 1 + the retries the user confirmed after a
  failure at the API;
- a job the table holds as at the API holds the newest request of its reference_id;
- a job that is not at the API, while the API holds a live request for it, owes a look-up (it
  cannot be sent again without asking first);
- no two jobs share an output file.

The fake API keeps the model's one assumption: a request the server creates becomes visible to
look-ups within the request timeout R of its POST (the grace and the settle times rest on it):
its late requests appear after LATE < R.

`make test` runs it briefly with a fixed seed; `make fuzz` at length.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dubrunner.governor import Governor
from dubrunner.outfiles import safe_name
from dubrunner.poller import Poller
from dubrunner.records import JobSpec
from dubrunner.store import LoadConflict, Store
from dubrunner.worker import Worker, WorkerOptions
from tests.fakeapi import MODES, FakeApi, Killed, client_for

R = 0.2  # the request timeout: leases of 2R, a send window of R/6
GRACE = 0.3  # --lookup-grace
BATCH = "m"
# Reference_ids chosen to collide under careless file naming.
REFS = ("ep:1", "ep/1", "ep_1", "EP_1", "ep1.", "ep1")


class PausableGovernor(Governor):
    """A governor that can hold its caller (a worker about to send) for as long as a test likes."""

    def __init__(self) -> None:
        super().__init__(None, 4)
        self.hold: threading.Event | None = None
        self.reached = threading.Event()

    @contextmanager
    def slot(self, stop: threading.Event, urgent: bool = False) -> Iterator[None]:
        hold, self.hold = self.hold, None
        if hold is not None:
            self.reached.set()
            hold.wait(10)
        with super().slot(stop, urgent):
            yield


class NeverTwice(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(os.environ.get("DUBRUNNER_MODEL_DIR", "/tmp")) / f"model-{uuid.uuid4()}"
        self.tmp.mkdir(parents=True)
        self.db = f"sqlite:///{self.tmp / 'jobs.db'}"
        self.api_fake = FakeApi()
        self.client = client_for(self.api_fake, read_timeout=R)
        self.options = WorkerOptions(
            concurrency=1,
            max_attempts=3,
            backoff_base=0.001,
            backoff_max=0.01,
            request_timeout=R,
            lookup_grace=GRACE,
        )
        self.stores: list[Store] = []
        self.workers: list[Worker] = []
        self.governors: list[PausableGovernor] = []
        self.allowed = dict.fromkeys(REFS, 1)
        self.generation = 0

    # -- set-up ----------

    def _specs(self, refs: tuple[str, ...], video: str) -> list[JobSpec]:
        return [
            JobSpec(ref, f"https://cdn.test/{video}/{i}.mp4", f"https://cdn.test/{i}.wav", False, i)
            for i, ref in enumerate(refs)
        ]

    def _new_worker(self, i: int) -> None:
        governor = PausableGovernor()
        worker = Worker(self.stores[i], self.client, governor, self.options, BATCH)
        self.workers[i], self.governors[i] = worker, governor

    @initialize()
    def start(self) -> None:
        for _ in range(2):
            self.stores.append(Store(self.db))
            self.workers.append(None)  # type: ignore[arg-type]
            self.governors.append(None)  # type: ignore[arg-type]
        self._new_worker(0)
        self._new_worker(1)
        self.stores[0].load(BATCH, self._specs(REFS, "v0"), "m.yaml")

    def teardown(self) -> None:
        for store in self.stores:
            store.close()
        self.client.close()

    # -- steps ----------

    def _work(self, i: int) -> None:
        try:
            self.workers[i].work_once()
        except Killed:
            self._new_worker(i)  # the process died; a new one (another owner) takes its place
            return
        if self.workers[i].stop.is_set():  # halted: this run is over
            self._new_worker(i)

    @rule(
        worker=st.integers(0, 1),
        modes=st.lists(st.sampled_from(MODES), min_size=1, max_size=4),
    )
    def work(self, worker: int, modes: list[str]) -> None:
        self.api_fake.modes.clear()
        self.api_fake.modes.extend(modes)
        self._work(worker)
        self.api_fake.modes.clear()

    @rule(seconds=st.sampled_from([0.05, 0.2, 0.45]))
    def time_passes(self, seconds: float) -> None:
        time.sleep(seconds)

    @rule(worker=st.integers(0, 1))
    def owner_found_dead(self, worker: int) -> None:
        """`resume` finds the previous owner dead on this host (its jobs settle, then reclaim)."""
        owners = self.stores[0].owners_of_submitting(BATCH)
        live = {w.owner for w in self.workers}
        for owner in owners:
            if owner not in live:
                self.stores[worker].mark_owner_dead(owner)

    @rule(
        paused=st.integers(0, 1),
        where=st.sampled_from(["before_sending", "after_the_server_acted"]),
        modes=st.lists(st.sampled_from(MODES[:8]), max_size=2),
    )
    def pause_past_the_lease(self, paused: int, where: str, modes: list[str]) -> None:
        """A worker stops (SIGSTOP, a laptop lid) mid-job, long enough for the other to take it."""
        other = 1 - paused
        hold = threading.Event()
        fake = self.api_fake
        fake.reached.clear()
        governor = self.governors[paused]
        governor.reached.clear()
        if where == "before_sending":
            governor.hold = hold
            reached = governor.reached
        else:
            fake.hold_after_create = hold
            reached = fake.reached
        thread = threading.Thread(target=self._work, args=(paused,), daemon=True)
        thread.start()
        try:
            if reached.wait(2):
                time.sleep(2 * R + 0.05)  # its lease lapses
                fake.modes.clear()
                fake.modes.extend(modes)
                for _ in range(3):
                    self._work(other)
        finally:
            governor.hold = None
            fake.hold_after_create = None
            hold.set()
            thread.join(10)
            fake.modes.clear()
        assert not thread.is_alive()

    @rule(ref=st.sampled_from(REFS))
    def fails_at_the_api(self, ref: str) -> None:
        with self.api_fake.lock:
            mine = [r for r in self.api_fake.requests if r.reference_id == ref]
            if mine:
                mine[-1].failed = True

    @rule()
    def poll(self) -> None:
        Poller(self.stores[0], self.client, Governor(), BATCH, 1).run(False, 0.01, None)

    @rule()
    def retry_confirmed(self) -> None:
        store = self.stores[0]
        for row in store.rows(BATCH, ["failed"]):
            if row.remote_status is not None:
                self.allowed[row.reference_id] += 1  # the user said --yes: paid again
        store.retry(BATCH, ["failed", "halted"], None)

    @rule(ref=st.sampled_from(REFS))
    def cancel(self, ref: str) -> None:
        self.stores[1].cancel(BATCH, [ref])

    @rule(refs=st.sets(st.sampled_from(REFS), min_size=1))
    def reload_changed(self, refs: set[str]) -> None:
        self.generation += 1
        changed = [
            spec if spec.reference_id not in refs else new
            for spec, new in zip(
                self._specs(REFS, "v0"), self._specs(REFS, f"v{self.generation}"), strict=True
            )
        ]
        with contextlib.suppress(LoadConflict):  # all or nothing: a sent job cannot change
            self.stores[1].load(BATCH, changed, "m.yaml")

    @rule()
    def resume(self) -> None:
        self.stores[0].reset_halted(BATCH)

    @rule()
    def filter_flips(self) -> None:
        self.api_fake.filter_ignored = not self.api_fake.filter_ignored

    # -- what must always hold ----------

    @precondition(lambda self: self.stores)
    @invariant()
    def never_more_requests_than_allowed(self) -> None:
        for ref in REFS:
            assert len(self.api_fake.created(ref)) <= self.allowed[ref], (
                ref,
                self.api_fake.created(ref),
            )

    @precondition(lambda self: self.stores)
    @invariant()
    def the_table_tracks_the_newest_request(self) -> None:
        for row in self.stores[0].rows(BATCH):
            created = self.api_fake.created(row.reference_id)
            live = [r for r in created if not r.failed]
            if row.state in ("submitted", "processing", "completed"):
                assert created and row.request_id == created[-1].id, (row, created)
            elif row.state in ("pending", "failed", "halted", "cancelled") and live:
                # The API holds a request the table does not: it must be asked about first.
                assert row.lookup_owed, (row, created)
                assert row.state != "cancelled", row

    @invariant()
    def no_two_jobs_share_an_output(self) -> None:
        names = {safe_name(ref).lower() for ref in REFS}
        assert len(names) == len(REFS)


NeverTwice.TestCase.settings = settings(
    max_examples=int(os.environ.get("DUBRUNNER_MODEL_EXAMPLES", "12")),
    stateful_step_count=int(os.environ.get("DUBRUNNER_MODEL_STEPS", "20")),
    derandomize=os.environ.get("HYPOTHESIS_PROFILE") != "fuzz",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUBRUNNER_MODEL_DIR", str(tmp_path))


TestNeverTwice = NeverTwice.TestCase
