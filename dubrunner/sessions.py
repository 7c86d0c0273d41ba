"""What the commands do, as sessions of the library: submit a manifest (load, check the media,
send, poll, download), send what is pending, poll, fetch, check media.

A session shows its progress and takes a stop through a `Ui` (the command line's is in cli/common),
and ends in one `Ending`: the sentence to show and the exit code. Nothing here knows of click or
of a terminal, so every session can be run and inspected without either."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dubrunner.api import ApiClient
from dubrunner.constants import EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from dubrunner.db import StoreError
from dubrunner.fetcher import Fetcher
from dubrunner.governor import Governor
from dubrunner.health import ServerHealth
from dubrunner.loadsession import Loaded as Loaded
from dubrunner.loadsession import load as load
from dubrunner.manifest import Manifest
from dubrunner.mediacheck import MediaCheck as MediaCheck
from dubrunner.mediacheck import MediaJob as MediaJob
from dubrunner.mediacheck import Rehash as Rehash
from dubrunner.mediacheck import check_local_files as check_local_files
from dubrunner.mediacheck import check_media as check_media

# A session's whole vocabulary, for the command line and the tests: these live in mediacheck and
# session_ui (so that this module holds the sessions alone) and are taken from here.
from dubrunner.mediacheck import run_check
from dubrunner.outfiles import safe_name, unwritable
from dubrunner.poller import GONE_AFTER, OUTPUT_GRACE, Poller
from dubrunner.running import Report
from dubrunner.session_ui import Ending as Ending
from dubrunner.session_ui import Progress as Progress
from dubrunner.session_ui import Ui as Ui
from dubrunner.states import AT_API, NOT_FOUND, State, is_known_remote
from dubrunner.store import Store
from dubrunner.worker import RunReport, Worker, WorkerOptions

MAX_FETCH_CONCURRENCY = 8  # downloads at once after a submit: its --concurrency, up to this


# -- sending ----------


@dataclass(frozen=True)
class SubmissionResult:
    """Where a batch (or every batch) stands after a submission, and what the worker did."""

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

    def ending(self) -> Ending:
        code = self.exit_code
        return Ending(
            self.sentence(), code, is_error=bool(self.report.fatal), routine=code == EXIT_OK
        )

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
            if r.halt_advice:
                advice = r.halt_advice
            elif "token limit" in low:
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


class Submission:
    """One pass of a worker over a batch (or every batch), halted jobs given another go: the
    cause of their halt (tokens, a credential) is taken to be fixed by now."""

    def __init__(
        self,
        store: Store,
        api: ApiClient,
        batch: str | None,
        options: WorkerOptions,
        governor: Governor | None = None,
        health: ServerHealth | None = None,
    ) -> None:
        self.store = store
        self.batch = batch
        self.governor = governor or options.governor(store, api)
        self.worker = Worker(store, api, self.governor, options, batch, health)

    def request_stop(self) -> None:
        self.worker.request_stop()

    def execute(self, tick: Callable[[], None] | None = None) -> SubmissionResult:
        self.store.reset_halted(self.batch)
        report = self.worker.run(tick)
        return SubmissionResult(self.batch, report, self.store.counts(self.batch))


def submit_pending(
    store: Store,
    api: ApiClient,
    batch: str | None,
    options: WorkerOptions,
    ui: Ui,
    governor: Governor | None = None,
    health: ServerHealth | None = None,
) -> Ending:
    """Send every job of the batch (or of every batch) that is not yet at the API."""
    counts = store.counts(batch)
    total = sum(n for s, n in counts.items() if s != State.CANCELLED)
    done = sum(counts.get(s, 0) for s in AT_API)
    submission = Submission(store, api, batch, options, governor, health)
    report = submission.worker.report
    started = time.monotonic()
    with ui.progress("submitting", total, submission.request_stop) as progress:

        def tick() -> None:
            pending = max(total - done - report.submitted - report.failed - report.halted, 0)
            detail = f"submitted {done + report.submitted} · failed {report.failed} · pending "
            detail += f"{pending}"
            trouble = submission.worker.health.describe()
            if trouble:
                detail += f" · {trouble}"
            elif submission.governor.paused_for > 0:
                detail += " · paused by the server"
            waiting_for = submission.worker.waiting_for
            if waiting_for:
                detail += f" · waiting for {waiting_for}"
            detail += _uploading(report, started)
            # Failures are no progress: the count, and the ETA, are of jobs at the API.
            progress.update(done + report.submitted, detail, left=pending)

        try:
            return submission.execute(tick).ending()
        except StoreError as exc:
            # Before anything was sent it is a set-up problem (exit 2, nothing happened); once
            # requests went out, the batch is part-done (exit 1): `resume` carries on.
            sent = submission.worker.report.requests > 0
            code = EXIT_INCOMPLETE if sent else EXIT_USAGE
            tail = " after some jobs were sent — fix it, then `dubrunner resume`" if sent else ""
            return Ending(f"the database failed: {exc}{tail}", code, is_error=True)


def _few(names: Sequence[str]) -> str:
    """'a, b, c' or 'a, b, c and 4 more'."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _uploading(report: RunReport, started: float) -> str:
    """' · uploaded 120 of 800 MB, 45.0 MB/s, ETA 15 s' while local files are being sent."""
    total, done = report.upload_total, report.upload_bytes
    if total < 1_000_000 or done >= total:
        return ""
    rate = done / max(time.monotonic() - started, 1e-6)
    eta = f", ETA {(total - done) / rate:.0f} s" if rate > 0 else ""
    return f" · uploaded {done / 1e6:.0f} of {total / 1e6:.0f} MB, {rate / 1e6:.1f} MB/s{eta}"


# -- the whole of `submit` ----------


@dataclass(frozen=True)
class Polling:
    """The first interval between rounds of polling (it grows), when to give up waiting, after
    how many rounds of "not found" a job ends, and how long a request may say it finished
    without an output_url."""

    interval: float = 5.0
    timeout: float | None = None
    gone_after: int = GONE_AFTER
    output_grace: float = OUTPUT_GRACE


def submit(
    store: Store,
    api: ApiClient,
    manifest: Manifest,
    options: WorkerOptions,
    ui: Ui,
    *,
    media: MediaCheck | None = None,
    wait: bool = False,
    polling: Polling = Polling(),
    fetch_into: Path | None = None,
    allow_same_media: bool = False,
    supersede: bool = False,
) -> Ending:
    """Load the manifest; with `media`, fail the jobs whose media fail the check, unsent; send the
    rest; with `wait` or `fetch_into`, poll until every job has ended; with `fetch_into`,
    download the outputs there. The ending is the last step's; a download after a poll that
    ended badly keeps the poll's exit code, unless the download itself was interrupted."""
    loaded = load(store, manifest, allow_same_media=allow_same_media, supersede=supersede)
    if isinstance(loaded, Ending):
        return loaded
    ui.say(loaded.summary)
    if media is not None:
        report, checked = run_check(store.unsent(manifest.batch), media, ui)
        if checked.code == EXIT_INTERRUPTED:
            return checked
        ui.tell(checked)
        reasons: dict[str, str] = {}
        for problem in report.problems:
            reasons.setdefault(
                problem.reference_id, f"preflight: {problem.which}: {problem.problem}"
            )
        store.fail_unsent(manifest.batch, reasons)
    # One rate budget for the whole command: its submits, then its polls and fresh output URLs;
    # one view of the API's health: the poll knows the API answered the POSTs.
    governor = options.governor(store, api)
    health = ServerHealth(api.base_url, options.outage_timeout)
    sent = submit_pending(store, api, manifest.batch, options, ui, governor, health)
    if sent.code != EXIT_OK or not (wait or fetch_into):
        return sent
    ui.tell(sent)
    polled = poll(
        store,
        api,
        manifest.batch,
        options,
        ui,
        wait=True,
        polling=polling,
        governor=governor,
        health=health,
    )
    if fetch_into is None or polled.code == EXIT_INTERRUPTED:
        return polled
    # Even when some jobs failed remotely (or the poll gave up), download those that completed.
    ui.tell(polled)
    concurrency = min(options.concurrency, MAX_FETCH_CONCURRENCY)
    fetched = fetch(store, manifest.batch, fetch_into, concurrency, ui, api, governor=governor)
    if polled.code == EXIT_OK or fetched.code == EXIT_INTERRUPTED:
        return fetched
    return dataclasses.replace(fetched, code=polled.code)


# -- after sending ----------


def _closing(summary: str, failure: str | None, report: Report) -> Ending:
    """The ending of a poll or a fetch: a failure of the run itself first, then a stop, then
    what went wrong with the jobs, else the summary."""
    if report.fatal:
        return Ending(f"{report.fatal}; {summary}", EXIT_INCOMPLETE, is_error=True)
    if report.interrupted:
        return Ending(f"interrupted: {summary}", EXIT_INTERRUPTED)
    if failure:
        return Ending(failure, EXIT_INCOMPLETE, is_error=True)
    return Ending(summary, routine=True)


def poll(
    store: Store,
    api: ApiClient,
    batch: str | None,
    options: WorkerOptions,
    ui: Ui,
    *,
    wait: bool,
    polling: Polling = Polling(),
    governor: Governor | None = None,
    health: ServerHealth | None = None,
) -> Ending:
    """Ask the API about every submitted job: one round, or (`wait`) rounds until every job has
    ended. Waiting exits 1 when some jobs failed remotely, are gone or are still going, or
    when the API failed as a whole for longer than --outage-timeout; one round exits 1 when
    none of its requests was answered."""
    poller = Poller(
        store,
        api,
        governor or options.governor(store, api),
        batch,
        options.concurrency,
        gone_after=polling.gone_after,
        output_grace=polling.output_grace,
        health=health or ServerHealth(api.base_url, options.outage_timeout, announce=wait),
    )
    total = poller.remaining()
    report = poller.report
    label = "polling" if wait else "polling once"
    with ui.progress(label, total, poller.request_stop) as progress:

        def tick() -> None:
            # No round number or request count: a piped line is printed when this changes.
            missing = f" · not found {report.missing}" if report.missing else ""
            trouble = poller.health.describe()
            progress.update(
                report.completed + report.failed,
                f"completed {report.completed} · failed {report.failed}{missing} · still going "
                f"{max(total - report.completed - report.failed, 0)}"
                + (f" · {trouble}" if trouble else ""),
            )

        poller.run(wait, polling.interval, polling.timeout, tick)
    counts = store.counts(batch)
    still = counts.get(State.SUBMITTED, 0) + counts.get(State.PROCESSING, 0)
    failed_remote = store.count_remote_failures(batch)
    gone = store.count_gone(batch)
    reported = store.open_remote_statuses(batch)
    missing = reported.pop(NOT_FOUND, 0)
    where = f"batch {batch}" if batch else "all batches"
    summary = (
        f"{where}: {counts.get(State.COMPLETED, 0)} completed, {failed_remote} failed remotely, "
        + (f"{gone} no longer known to the API, " if gone else "")
        + f"{still} still processing"
        + (f" ({missing} not found)" if missing else "")
    )
    details = tuple(
        f"{n} job{' reports' if n == 1 else 's report'} status {status!r}, taken as still running"
        for status, n in sorted(reported.items())
        if not is_known_remote(status)
    )
    if report.statusless:
        n = report.statusless
        details += (
            f"{n} job{'' if n == 1 else 's'}' request{' comes' if n == 1 else 's come'} without a "
            "status, taken as still running",
        )
    failure = None
    if report.halt_message:
        advice = report.halt_advice or "fix it, then poll again"
        failure = f"{report.halt_message}; {summary} — {advice}"
    elif report.timed_out:
        failure = f"timed out waiting; {summary}"
    elif report.unanswered and not wait:
        failure = (
            f"the API at {api.base_url} answered none of this poll's requests (the last: "
            f"{report.unanswered}); {summary} — poll again once it answers"
        )
    ending = dataclasses.replace(_closing(summary, failure, report), details=details)
    if ending.code == EXIT_OK and wait and (still or failed_remote or gone):
        return dataclasses.replace(ending, code=EXIT_INCOMPLETE)
    return ending


def fetch(
    store: Store,
    batch: str | None,
    out: Path,
    concurrency: int,
    ui: Ui,
    api: ApiClient | None = None,
    verify: bool = False,
    governor: Governor | None = None,
) -> Ending:
    """Download every completed job's output into `out`; with `api`, an output URL that expired
    (or was had long ago) is asked for afresh; with `verify`, every file already there is hashed
    again (otherwise only those changed since they were recorded)."""
    # A folder that cannot be written is refused up front, not blamed on each job (found by an
    # outside attack: `--out /dev/null/x` marked every download failed).
    for folder in [out, *(out / safe_name(b) for b in ([batch] if batch else store.batches()))]:
        if folder == out or folder.exists():  # a batch's folder is made when first needed
            problem = unwritable(folder)
            if problem is not None:
                return Ending(f"{problem} (--out); nothing fetched", EXIT_USAGE, is_error=True)
    fetcher = Fetcher(store, out, batch, concurrency, api=api, governor=governor, verify=verify)
    total = store.count_in_states(batch, [State.COMPLETED])
    report = fetcher.report
    with ui.progress("downloading", total, fetcher.request_stop) as progress:

        def tick() -> None:
            done = report.downloaded + report.skipped + report.failed
            busy = f" · {report.busy} being downloaded by another fetch" if report.busy else ""
            progress.update(
                report.downloaded + report.skipped,
                f"{report.bytes / 1e6:.1f} MB · failed {report.failed}{busy}",
                left=max(total - done, 0),
            )

        fetcher.run(tick)
    restarted = f", {report.restarted} started over" if report.restarted else ""
    if report.refreshed:
        restarted += f", {report.refreshed} fresh URL(s) from the API"
    summary = (
        f"{report.downloaded} downloaded ({report.bytes / 1e6:.1f} MB, {report.resumed} resumed"
        f"{restarted}), {report.skipped} already there, {report.failed} failed, into {out}"
    )
    failure = None
    if report.halt_message:  # the storage failed as a whole: the jobs not done stay as they were
        left = total - report.downloaded - report.skipped - report.failed - report.busy
        failure = f"{report.halt_message}; {summary}, {max(left, 0)} left to fetch — " + (
            report.halt_advice or "run `dubrunner fetch` again"
        )
    elif report.failed:
        failure = f"{summary} — see `dubrunner status --format json`"
    elif report.busy:
        failure = (
            f"{summary}; {report.busy} being downloaded by another dubrunner fetch"
            + (
                f" ({_few(report.busy_stalled)}), which has written nothing for "
                f"{fetcher.busy_stall:g} s"
                if report.busy_stalled
                else " when this one was stopped"
            )
            + " — run fetch again once it has ended"
        )
    return _closing(summary, failure, report)
