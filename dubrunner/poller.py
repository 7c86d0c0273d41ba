"""Poll every submitted job's remote request until it ends.

A round walks the list endpoint (`v1/lipsync/requests`, full request objects, the largest page
the API gives, newest first) and matches its items to the open jobs by request_id; it stops as
soon as every open job was seen, or when a whole page is older than the oldest open job. Only the
jobs not seen there, and those it says finished without an output_url (a GET may give one), are
asked for one by one (`v1/lipsync/requests/{id}`).

A request the API answers "not found" for is counted, round after round; after `gone_after`
rounds (and a minute after it was submitted) the job ends failed: the API no longer knows it.
When the API knows none of the jobs polled, nor any request of ours that ended, it is the wrong
address: the poll halts at once.

Every answer is also the server's health's (health.py): an API failing as a whole is one event,
never an error of each job. During an outage a round asks one request at a time on the probing
schedule and ends at its first failure; after --outage-timeout the poll halts, jobs untouched."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

import httpx

from dubrunner.api import Answer, ApiClient
from dubrunner.errors import (
    Action,
    Fault,
    Outcome,
    ResponseTooLarge,
    any_request_id,
    classify_answer,
    classify_exception,
    created_at,
    is_not_found,
    parse_json,
    request_key,
)
from dubrunner.governor import Governor, Stopped
from dubrunner.health import Condition, HealthTeller, OutageTooLong, ServerHealth, knows_none
from dubrunner.records import AttemptRecord, PollTarget, RemoteView, utcnow
from dubrunner.redact import is_http_url, scrub
from dubrunner.running import Report, Run
from dubrunner.states import State, state_for_remote
from dubrunner.store import Store

log = logging.getLogger("dubrunner")
PAGE = 500  # open jobs read from the database at once
LIST_PAGE = 100  # items asked for per page of the list (the API may give fewer)
EXTRA_PAGES = 5  # pages walked beyond ceil(open / LIST_PAGE) before asking one by one
PAGE_TRIES = 3  # tries of one page of the list before asking one by one
CLOCK_SKEW = timedelta(minutes=10)  # the API's clock and ours may disagree this much
MAX_INTERVAL = 60.0
GONE_AFTER = 3  # rounds of "not found" before a job ends failed
# ... and never sooner than this after it was submitted: a request just created may not be
# readable everywhere yet, and a job ended as gone may be sent (and paid) again by `retry`.
GONE_MIN_AGE = timedelta(minutes=1)
OUTPUT_GRACE = 300.0  # seconds a finished request may go without an output_url
_GET_ONE = "GET v1/lipsync/requests/{id}"
_LIST = "GET v1/lipsync/requests"
POLL_AGAIN = "run `dubrunner poll --wait` once the API answers again"


@dataclass
class PollReport(Report):
    rounds: int = 0
    requests: int = 0
    list_requests: int = 0  # pages of the list asked for
    completed: int = 0  # ended well during this run
    failed: int = 0  # ended badly during this run
    gone: int = 0  # ended because the API no longer knows the request
    missing: int = 0  # answered "not found" in the last round
    errors: int = 0  # polls that got no usable answer (tried again next round)
    unanswered: str | None = None  # the last round got no answer at all: the last error
    statusless: int = 0  # jobs whose request came without a status, taken as still running
    timed_out: bool = False


def _text(value: object, limit: int) -> str | None:
    """A remote field as it may be stored: a server echoing our credential must not put it in the
    database. Scrubbed before it is cut, so no half of a credential survives."""
    if not isinstance(value, (str, int, float)) or value == "":
        return None
    return scrub(str(value))[:limit]


def _status(item: dict[str, Any]) -> str | None:
    """A request's status word; None for none at all (null, left out, a number, an object)."""
    value = item.get("status")
    return _text(value, 40) if isinstance(value, str) else None


def output_url_of(value: object, base: str | None) -> str | None:
    """A request's output_url as it may be downloaded: an absolute http(s) URL, or one relative
    to the API's base URL (a path such as "/files/abc.mp4", resolved as a browser would). The
    base URL, not the list's or the GET's address, so that both give the same URL; safe since
    the download never carries the API's credentials (and the base's user:password, if any,
    is dropped). Anything else is no output_url."""
    if not isinstance(value, str) or not value.strip():
        return None
    url = value.strip()
    if base is not None and not is_http_url(url):
        try:
            url = str(httpx.URL(base).copy_with(userinfo=b"").join(url))
        except (httpx.InvalidURL, ValueError, TypeError):
            return None
    return scrub(url) if is_http_url(url) else None


def interpret(
    view: dict[str, Any],
    done_at: float | None = None,
    grace: float = OUTPUT_GRACE,
    now: float | None = None,
    *,
    base: str | None = None,
) -> RemoteView:
    """What a request object of the API says about the job, ready to be kept. A finished status
    without an output_url keeps the job open (`done_at` says since when) for `grace` seconds.
    `base`: the API's base URL, which a relative output_url is resolved against."""
    remote = _status(view)
    state = state_for_remote(remote)
    output_url = output_url_of(view.get("output_url"), base)
    error = _text(view.get("error_message"), 500)
    last_error = None
    if state is State.COMPLETED and output_url is None:
        now = time.time() if now is None else now
        done_at = now if done_at is None else done_at
        if now - done_at >= grace:
            state = State.FAILED
            last_error = f"the API said {remote!r} without an output_url for {grace:g} s"
        else:
            state = State.PROCESSING
        error = f"the API said {remote!r} without an output_url"
    else:
        done_at = None
        if state is State.FAILED:
            last_error = f"failed remotely: {error or remote}"
    return RemoteView(
        state,
        remote,
        error,
        output_url,
        _text(view.get("started_at"), 40),
        _text(view.get("finished_at"), 40),
        last_error,
        done_at,
    )


def _finished_without_output(item: dict[str, Any], base: str) -> bool:
    """A list's item saying finished without an output_url: never the last word, since the list
    may leave out what a GET of the request gives (found by an outside attack: jobs failed
    after --output-grace whose GET had the URL all along)."""
    finished = state_for_remote(_status(item)) is State.COMPLETED
    return finished and output_url_of(item.get("output_url"), base) is None


class Poller(Run):
    report: PollReport

    def __init__(
        self,
        store: Store,
        api: ApiClient,
        governor: Governor,
        batch: str | None,
        concurrency: int,
        *,
        gone_after: int = GONE_AFTER,
        output_grace: float = OUTPUT_GRACE,
        use_list: bool = True,
        health: ServerHealth | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.api = api
        self.governor = governor
        self.batch = batch
        self.concurrency = concurrency
        self.gone_after = gone_after
        self.output_grace = output_grace
        self.use_list = use_list
        self.health = health or ServerHealth(api.base_url)
        # Each round's end leaves the API's health for `status`, as a worker's heartbeat does.
        self._teller = HealthTeller(self.health, store.record_health, self.owner)
        self.report = PollReport()
        self._known_elsewhere = False  # the API answered for a request of ours that ended
        self._missing: list[tuple[PollTarget, AttemptRecord]] = []
        self._faults: set[Fault] = set()
        self._down = False  # this round met the outage: it asks nothing more
        self._answered = 0  # answers of the API this round
        self._asked = 0  # requests made, each a witness of its own to the server's health
        self._statusless: set[int] = set()  # jobs whose request was last read without a status

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
            self._teller.tell()
            if not wait or self.stop.is_set() or self.remaining() == 0:
                return
            if deadline is not None and time.monotonic() + interval > deadline:
                self.report.timed_out = True
                return
            if self._down:
                continue  # the next round's first request waits for its turn to probe
            self.stop.wait(interval)
            interval = min(interval * 1.5, max(interval, MAX_INTERVAL))

    def _round(self) -> None:
        targets: list[PollTarget] = []
        after = 0
        while page := self.store.poll_targets(self.batch, after, PAGE):
            after = page[-1].id
            targets += page
        self._missing, self._faults = [], set()
        self._down, self._answered = False, 0
        seen: set[int] = set()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="poll") as pool:
            # During an outage a GET is the probe: a list that fails for good is done without.
            if self.use_list and targets and self.health.condition is not Condition.OUTAGE:
                self._walk(targets, seen, pool)
            rest = [t for t in targets if t.id not in seen]
            if rest and self.health.condition is Condition.OUTAGE:
                self._poll_one(rest.pop(0))  # a probe: the others only once it was answered
            list(pool.map(self._poll_one, rest))
        self._settle(len(targets))

    # -- the list ----------

    def _walk(self, targets: list[PollTarget], seen: set[int], pool: ThreadPoolExecutor) -> None:
        """Pages of the list, newest first, until every target was seen or the pages are older
        than the oldest of them. Past ceil(open / LIST_PAGE) + EXTRA_PAGES pages (requests of
        others newer than ours), it goes on only while the pages walked are fewer than half the
        jobs not yet seen: a round never costs much more than one GET per job would."""
        by_id = {request_key(t.request_id): t for t in targets}
        by_ref = {t.reference_id: t for t in targets}
        times = [t.submitted_at for t in targets if t.submitted_at is not None]
        cutoff = min(times).replace(tzinfo=UTC) - CLOCK_SKEW if len(times) == len(targets) else None
        offset = pages = 0
        first_ids: set[str | None] = set()
        budget = math.ceil(len(targets) / LIST_PAGE) + EXTRA_PAGES
        while pages < budget or pages < (len(targets) - len(seen)) // 2:
            if self.stop.is_set() or len(seen) == len(targets):
                return
            pages += 1
            answer, ms = self._page(offset)
            if answer is None:
                return  # those not seen are asked for one by one
            if answer.status == 404:
                log.info("the API has no list of requests here; polling one by one")
                self.use_list = False
                return
            data = parse_json(answer.body)
            items = data.get("data")
            if not isinstance(items, list):
                log.info("the list answered without a 'data' list; polling one by one")
                self.use_list = False
                return
            first = items[0] if items else None
            head = any_request_id(first.get("id")) if isinstance(first, dict) else None
            if head is not None and head in first_ids:
                log.info("the list gives the same page for every offset; polling one by one")
                self.use_list = False
                return
            first_ids.add(head)
            older = bool(items)
            learned: list[tuple[PollTarget, dict[str, Any]]] = []
            for item in items:
                if not isinstance(item, dict):
                    continue
                request_id = any_request_id(item.get("id"))
                key = request_key(request_id) if request_id else None
                ref = item.get("reference_id")
                target = by_id.get(key) if key else by_ref.get(str(ref))
                if target is not None and target.id not in seen:
                    if _finished_without_output(item, self.api.base_url):
                        continue  # a GET of the request is asked (below): it may carry the URL
                    seen.add(target.id)
                    learned.append((target, item))
                when = created_at(item)
                if cutoff is None or when is None or when >= cutoff:
                    older = False
            # Recorded by the pool's threads at once: their commits are grouped (see db.py).
            targets_, items_ = [t for t, _ in learned], [i for _, i in learned]
            n = len(learned)
            list(pool.map(self._learned, targets_, items_, [answer.status] * n, [ms] * n))
            pagination = data.get("pagination")
            total = pagination.get("total") if isinstance(pagination, dict) else None
            offset += len(items)
            if older or not items or (isinstance(total, int) and offset >= total):
                return

    def _page(self, offset: int) -> tuple[Answer | None, int]:
        """A page of the list, tried again (after any pause the server asked for) when it met
        a passing failure; None when it could not be had."""
        for _ in range(PAGE_TRIES):
            self.add("list_requests")
            ask = functools.partial(self.api.list_requests, LIST_PAGE, offset)
            answer, outcome, ms = self._ask(ask, _LIST, _LIST)
            if answer is not None or outcome is None or outcome.action is not Action.RETRY:
                return answer, ms
            if self._down:
                return None, 0
            self.stop.wait(0.2)  # a pause the server asked for is the governor's
        return None, 0

    # -- one request ----------

    def _ask(
        self, call: Callable[[], Answer], what: str, witness: str | None = None
    ) -> tuple[Answer | None, Outcome | None, int]:
        """One GET (`what`, for a sentence) under the health gate and the governor: (answer,
        outcome, ms). The answer is None when it is not the API's JSON (the outcome says why,
        and the round keeps its fault); both are None when the run was stopped first, or the
        round is down. Each GET of one job is a witness of its own to the server's health (a
        round may ask for one job only); the list's pages are one witness (`witness`): a list
        that fails while the GETs answer is no outage."""
        if self._down:
            return None, None, 0
        started = time.monotonic()
        try:
            with self.health.gate(self.stop):
                if self._down:  # the outage goes on: this round asks nothing more
                    return None, None, 0
                with self.governor.slot(self.stop):
                    self.add("requests")
                    with self._lock:
                        self._asked += 1
                        key = witness or f"poll request {self._asked}"
                    answer = call()
            outcome = classify_answer(answer.status, answer.headers, answer.body, idempotent=True)
            self.governor.observe(outcome.throttled)
        except Stopped:
            return None, None, 0
        except OutageTooLong as exc:
            self.halt(scrub(str(exc)), POLL_AGAIN)
            return None, None, 0
        except (httpx.TransportError, httpx.StreamError, ResponseTooLarge) as exc:
            outcome = classify_exception(exc, idempotent=True)
            answer = None
        ms = int((time.monotonic() - started) * 1000)
        if outcome.retry_after:
            self.governor.pause(outcome.retry_after)
        usable = answer is not None and (
            outcome.action is Action.ACCEPTED or is_not_found(answer.status, answer.body)
        )
        # A GET answered (the API's own "not found" too) counts as a POST's answer does for a
        # worker: here it is what proves the API does what this run needs.
        verdict = self.health.observe(key, outcome, what, send=True)
        if verdict.halt:
            advice = verdict.advice
            self.halt(scrub(verdict.halt), f"{advice}, then poll again" if advice else POLL_AGAIN)
        if usable:
            with self._lock:
                self._answered += 1
            return answer, outcome, ms
        with self._lock:
            self._faults.add(outcome.fault)
            self._down = self._down or self.health.condition is Condition.OUTAGE
        self.add("errors")
        log.debug("poll → %s %s", outcome.status or "-", scrub(outcome.message))
        if outcome.action is Action.HALT_BATCH:
            self.halt(scrub(outcome.message))
        return None, outcome, ms

    def _poll_one(self, target: PollTarget) -> None:
        if self.stop.is_set():
            return
        answer, outcome, ms = self._ask(lambda: self.api.get_request(target.request_id), _GET_ONE)
        if outcome is None or (answer is None and self._down):
            return  # stopped, or the API is down: nothing to keep of this job
        if answer is None:
            message = scrub(outcome.message)
            attempt = AttemptRecord("poll", outcome.action.value, outcome.status, message, ms)
            self.store.record_poll_error(target.id, self.owner, attempt)
            return
        if answer.status == 404:
            attempt = AttemptRecord("poll", "not_found", 404, "not found", ms, target.request_id)
            with self._lock:
                self._missing.append((target, attempt))
            return
        self._learned(target, parse_json(answer.body), answer.status, ms)

    def _learned(
        self, target: PollTarget, item: dict[str, Any], status: int | None, ms: int
    ) -> None:
        """Keep what the API said of one job's request."""
        view = interpret(item, target.done_at, self.output_grace, base=self.api.base_url)
        with self._lock:  # no status at all (null, an object, left out): running, but said
            (self._statusless.add if view.status is None else self._statusless.discard)(target.id)
            self.report.statusless = len(self._statusless)
        if (view.state, view.status, view.done_at, 0) == (
            State.PROCESSING,
            target.status,
            target.done_at,
            target.missing,
        ):
            return  # nothing new: no write
        ended: AttemptRecord | None = None
        if view.state != State.PROCESSING:
            ended = AttemptRecord(
                "poll", view.state, status, view.last_error, ms, target.request_id
            )
        if self.store.record_remote(target.id, self.owner, view, ended):
            if view.state == State.COMPLETED:
                self.add("completed")
            elif view.state == State.FAILED:
                self.add("failed")
        log.debug("%s poll → %s", target.reference_id, view.status)

    # -- the end of a round ----------

    def _settle(self, polled: int) -> None:
        """Count the "not found" answers, or halt when the API is not the one that has them."""
        missing = self._missing
        self.report.missing = len(missing)
        self.report.unanswered = None
        if polled and not self._answered and self._faults:
            self.report.unanswered = self.health.last_error or "no answer"
        where = self.api.base_url
        # A wrong address only when every job polled was "not found": a job seen, or whose poll
        # failed this round, may well be known (found by an outside attack: three jobs not found
        # and two unanswered were blamed on CHAMELAION_BASE_URL).
        if missing and len(missing) == polled and not self._knows_our_requests():
            for target, attempt in missing:  # shown, never counted towards the end
                self.store.record_missing(target.id, self.owner, attempt, target.missing)
            self.halt(knows_none(where, polled, "polled"))
            return
        young = utcnow() - GONE_MIN_AGE
        for target, attempt in missing:
            count = target.missing + 1
            gone = None
            if count >= self.gone_after and (target.submitted_at or young) < young:
                gone = f"the API no longer knows this request (not found in {count} polls)"
                # Recorded as the request's end: a later look-up for this job (after `retry`)
                # takes it for history, not for the answer to a new POST.
                attempt = dataclasses.replace(attempt, outcome=State.FAILED, error=gone)
            if self.store.record_missing(target.id, self.owner, attempt, count, gone) and gone:
                self.add("gone")

    def _knows_our_requests(self) -> bool:
        """Whether the API knows a request of ours that ended (so "not found" is about the jobs
        themselves, not a wrong address): asked once per run."""
        if not self._known_elsewhere:
            known = self.store.known_request_id()
            if known is not None:
                answer, _outcome, _ms = self._ask(lambda: self.api.get_request(known), _GET_ONE)
                self._known_elsewhere = answer is not None and answer.status == 200
        return self._known_elsewhere
