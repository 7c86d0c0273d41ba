"""Orchestration between the CLI and the worker: load, work a batch, sum up the result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dubrunner.api import ApiClient
from dubrunner.states import AT_API, State
from dubrunner.store import Store
from dubrunner.worker import RunReport, Worker, WorkerOptions

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class BatchResult:
    batch: str | None
    report: RunReport
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(n for s, n in self.counts.items() if s != State.CANCELLED)

    @property
    def at_api(self) -> int:
        return sum(self.counts.get(s, 0) for s in AT_API)

    @property
    def left(self) -> int:
        return self.total - self.at_api

    @property
    def exit_code(self) -> int:
        if self.report.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_OK if self.left == 0 and not self.report.fatal else EXIT_INCOMPLETE

    def sentence(self) -> str:
        """One sentence: what happened and what to do."""
        what = f"batch {self.batch}" if self.batch else "all batches"
        done = f"{self.at_api} of {self.total} jobs"
        pending = self.counts.get(State.PENDING, 0) + self.counts.get(State.SUBMITTING, 0)
        failed = self.counts.get(State.FAILED, 0)
        resume = f"dubrunner resume --batch {self.batch}" if self.batch else "dubrunner resume"
        failed_note = f"; {failed} failed (see `dubrunner status --state failed`)" if failed else ""
        r = self.report
        if r.halt_message:
            msg = r.halt_message
            low = msg.lower()
            if "token limit" in low:
                advice = "top up the account's tokens"
            elif "dubrunner bug" in low:
                advice = "report this bug"
            elif "cannot reach the api" in low or "redirect" in low:
                advice = "check CHAMELAION_BASE_URL"
            else:
                advice = "check CHAMELAION_API_KEY / CHAMELAION_BEARER_TOKEN"
            left = self.left - failed
            return (
                f"{msg} after {done}; {left} left pending{failed_note} — {advice}, then `{resume}`"
            )
        if r.interrupted:
            return f"interrupted: {done} submitted; {self.left} left — `{resume}` continues"
        if r.fatal:
            return f"stopped: {r.fatal}; {done} submitted — fix it, then `{resume}`"
        if self.left == 0:
            before = self.at_api - r.submitted
            tail = f" ({r.submitted} now, {before} before)" if before else ""
            return f"all {self.total} jobs of {what} submitted{tail}"
        if failed and pending == 0:
            return f"{done} submitted; {failed} failed — see `dubrunner status --state failed`"
        return f"{done} submitted; {self.left} not yet{failed_note} — `{resume}` continues"


class BatchRun:
    """One run of the worker over a batch (or every batch), with halted jobs given another go."""

    def __init__(
        self,
        store: Store,
        api: ApiClient,
        batch: str | None,
        options: WorkerOptions,
    ) -> None:
        self.store = store
        self.batch = batch
        self.governor = options.governor(store, api)
        self.worker = Worker(store, api, self.governor, options, batch)

    def request_stop(self) -> None:
        self.worker.request_stop()

    def execute(self, tick: Callable[[], None] | None = None) -> BatchResult:
        self.store.reset_halted(self.batch)
        report = self.worker.run(tick)
        return BatchResult(self.batch, report, self.store.counts(self.batch))
