"""Poll every submitted job's remote request until it ends: one GET per job per round."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from dubrunner.api import ApiClient
from dubrunner.errors import (
    Action,
    ResponseTooLarge,
    classify_answer,
    classify_exception,
    parse_json,
)
from dubrunner.governor import Governor, Stopped
from dubrunner.records import AttemptRecord, PollTarget, RemoteView
from dubrunner.redact import is_http_url, scrub
from dubrunner.running import Report, Run
from dubrunner.states import State, state_for_remote
from dubrunner.store import Store

log = logging.getLogger("dubrunner")
PAGE = 500
MAX_INTERVAL = 60.0


@dataclass
class PollReport(Report):
    rounds: int = 0
    requests: int = 0
    completed: int = 0  # ended well during this run
    failed: int = 0  # ended badly during this run
    errors: int = 0  # polls that got no usable answer (tried again next round)
    timed_out: bool = False


def _text(value: object, limit: int) -> str | None:
    """A remote field as it may be stored: a server echoing our credential must not put it in the
    database. Scrubbed before it is cut, so no half of a credential survives."""
    if not isinstance(value, (str, int, float)) or value == "":
        return None
    return scrub(str(value))[:limit]


def interpret(view: dict[str, Any]) -> RemoteView:
    """What `GET v1/lipsync/requests/{id}` says about the job, ready to be kept."""
    remote = _text(view.get("status"), 40)
    state = state_for_remote(remote)
    output = view.get("output_url")
    output_url = scrub(output) if isinstance(output, str) and is_http_url(output) else None
    error = _text(view.get("error_message"), 500)
    last_error = None
    if state is State.FAILED:
        last_error = f"failed remotely: {error or remote}"
    elif state is State.COMPLETED and output_url is None:
        error = "the API reported completion without an output_url"
    return RemoteView(
        state,
        remote,
        error,
        output_url,
        _text(view.get("started_at"), 40),
        _text(view.get("finished_at"), 40),
        last_error,
    )


class Poller(Run):
    report: PollReport

    def __init__(
        self,
        store: Store,
        api: ApiClient,
        governor: Governor,
        batch: str | None,
        concurrency: int,
    ) -> None:
        super().__init__()
        self.store = store
        self.api = api
        self.governor = governor
        self.batch = batch
        self.concurrency = concurrency
        self.report = PollReport()

    def remaining(self) -> int:
        return self.store.count_in_states(self.batch, [State.SUBMITTED, State.PROCESSING])

    def run(
        self,
        wait: bool,
        interval: float,
        timeout: float | None,
        tick: Callable[[], None] | None = None,
    ) -> PollReport:
        """One round, or (wait) rounds with a growing interval until every job has ended."""
        self.store.start_group_commit()
        self.ticking(lambda: self._rounds(wait, interval, timeout), tick)
        return self.report

    def _rounds(self, wait: bool, interval: float, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.stop.is_set():
            self._round()
            self.report.rounds += 1
            if not wait or self.stop.is_set() or self.remaining() == 0:
                return
            if deadline is not None and time.monotonic() + interval > deadline:
                self.report.timed_out = True
                return
            self.stop.wait(interval)
            interval = min(interval * 1.5, max(interval, MAX_INTERVAL))

    def _round(self) -> None:
        after = 0
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="poll") as pool:
            while not self.stop.is_set():
                page = self.store.poll_targets(self.batch, after, PAGE)
                if not page:
                    return
                after = page[-1].id
                list(pool.map(self._poll_one, page))

    def _poll_one(self, target: PollTarget) -> None:
        if self.stop.is_set():
            return
        started = time.monotonic()
        self.add("requests")
        try:
            with self.governor.slot(self.stop):
                answer = self.api.get_request(target.request_id)
            outcome = classify_answer(answer.status, answer.headers, answer.body, idempotent=True)
            self.governor.observe(outcome.throttled)
            body = answer.body
        except Stopped:
            return
        except (httpx.TransportError, httpx.StreamError, ResponseTooLarge) as exc:
            outcome = classify_exception(exc, idempotent=True)
            body = b""
        duration = int((time.monotonic() - started) * 1000)
        if outcome.retry_after:
            self.governor.pause(outcome.retry_after)
        if outcome.action is not Action.ACCEPTED:
            message = scrub(outcome.message)
            attempt = AttemptRecord("poll", outcome.action.value, outcome.status, message, duration)
            self.store.record_poll_error(target.id, self.owner, attempt)
            self.add("errors")
            log.debug("%s poll → %s %s", target.reference_id, outcome.status or "-", message)
            if outcome.action is Action.HALT_BATCH:
                self.halt(message)
            return
        view = interpret(parse_json(body))
        ended: AttemptRecord | None = None
        if view.state != State.PROCESSING:
            ended = AttemptRecord(
                "poll", view.state, outcome.status, view.last_error, duration, target.request_id
            )
        if self.store.record_remote(target.id, self.owner, view, ended):
            if view.state == State.COMPLETED:
                self.add("completed")
            elif view.state == State.FAILED:
                self.add("failed")
        log.debug("%s poll → %s", target.reference_id, view.status)
