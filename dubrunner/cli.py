"""The command line: parse, make one library call, print. Exit codes: 0 every job submitted,
1 some failed or halted, 2 bad input or usage, 130 interrupted."""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from dubrunner import __version__
from dubrunner.api import ApiClient, ConfigError, Credentials
from dubrunner.fetcher import Fetcher
from dubrunner.manifest import DEFAULT_MAX_BYTES, DEFAULT_MAX_JOBS, Manifest, ManifestError
from dubrunner.manifest import load as load_manifest
from dubrunner.output import (
    FORMATS,
    ProgressDisplay,
    print_csv,
    print_job_detail,
    print_json,
    print_media_problems,
    print_status_table,
    setup_logging,
    table_console,
    write_export,
)
from dubrunner.poller import Poller
from dubrunner.preflight import Pair, Preflight, PreflightReport
from dubrunner.redact import scrub
from dubrunner.runner import EXIT_INTERRUPTED, EXIT_USAGE, BatchResult, BatchRun
from dubrunner.states import AT_API, RETRYABLE, State
from dubrunner.store import LoadConflict, LoadPlan, Store, StoreError
from dubrunner.worker import WorkerOptions

F = TypeVar("F", bound=Callable[..., Any])


class UserError(click.ClickException):
    """Bad input or usage: one line, exit 2."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {scrub(self.format_message())}", err=True)


def common_options(fn: F) -> F:
    @click.option(
        "--db",
        envvar="DUBRUNNER_DB",
        metavar="PATH|URL",
        help="SQLite file or SQLAlchemy URL [env DUBRUNNER_DB; default ./dubrunner.db]",
    )
    @click.option("-v", "--verbose", count=True, help="One line per HTTP attempt.")
    @click.option("-q", "--quiet", is_flag=True, help="Only errors.")
    @functools.wraps(fn)
    def wrapper(*args: Any, db: str | None, verbose: int, quiet: bool, **kwargs: Any) -> Any:
        setup_logging(verbose, quiet)
        ctx = click.get_current_context()
        ctx.meta["quiet"] = quiet
        ctx.meta["db"] = db
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


if TYPE_CHECKING:  # click 8.2+ makes ParamType generic; older ones cannot be subscripted
    _ParamType = click.ParamType[Any]
else:
    _ParamType = click.ParamType


class RateType(_ParamType):
    """A positive number of requests per second, or 'auto'."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float) or value == "auto":
            return value
        try:
            rate = float(value)
        except (TypeError, ValueError):
            rate = -1.0
        if not rate > 0:
            self.fail(f"{value!r} is neither a positive number nor 'auto'", param, ctx)
        return rate


def worker_options(fn: F) -> F:
    options = [
        click.option(
            "--concurrency",
            type=click.IntRange(1, 256),
            default=4,
            show_default=True,
            envvar="DUBRUNNER_CONCURRENCY",
            help="Requests in flight at once.",
        ),
        click.option(
            "--rate",
            type=RateType(),
            default=None,
            envvar="DUBRUNNER_RATE",
            help="Requests per second at most, or 'auto' to find the server's limit "
            "[default: unlimited].",
        ),
        click.option(
            "--burst",
            type=click.IntRange(1, 1000),
            default=1,
            show_default=True,
            envvar="DUBRUNNER_BURST",
            help="Requests that may go at once under --rate.",
        ),
        click.option(
            "--max-attempts",
            type=click.IntRange(1, 100),
            default=8,
            show_default=True,
            envvar="DUBRUNNER_MAX_ATTEMPTS",
            help="Tries per job before it fails.",
        ),
        click.option(
            "--rate-shared",
            is_flag=True,
            envvar="DUBRUNNER_RATE_SHARED",
            help="--rate is for every worker on this database together (booked in the database).",
        ),
        click.option(
            "--retry-wait",
            type=click.FloatRange(min=0),
            default=0.5,
            show_default=True,
            envvar="DUBRUNNER_RETRY_WAIT",
            help="First wait before a retry, in seconds; it doubles each time (with jitter).",
        ),
        click.option(
            "--request-timeout",
            type=click.FloatRange(min=0.1),
            default=60.0,
            show_default=True,
            envvar="DUBRUNNER_REQUEST_TIMEOUT",
            help="Seconds to wait for an answer; claims are leased for twice that.",
        ),
        click.option(
            "--allow-insecure-http",
            is_flag=True,
            envvar="DUBRUNNER_ALLOW_INSECURE_HTTP",
            help="Allow credentials over plain http to a host other than loopback.",
        ),
    ]

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        concurrency: int,
        rate: float | str | None,
        burst: int,
        rate_shared: bool,
        max_attempts: int,
        retry_wait: float,
        request_timeout: float,
        **kwargs: Any,
    ) -> Any:
        auto = rate == "auto"
        if auto and rate_shared:
            raise UserError("--rate auto and --rate-shared do not go together: give a number")
        options = WorkerOptions(
            concurrency=concurrency,
            max_attempts=max_attempts,
            backoff_base=retry_wait,
            request_timeout=request_timeout,
            rate=None if auto else rate,  # type: ignore[arg-type]
            burst=burst,
            rate_shared=rate_shared,
            rate_auto=auto,
        )
        return fn(*args, options=options, **kwargs)

    decorated: Any = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]


def poll_options(fn: F) -> F:
    fn = click.option(
        "--timeout",
        type=click.FloatRange(min=0),
        default=None,
        envvar="DUBRUNNER_POLL_TIMEOUT",
        help="With --wait: give up after this many seconds [default: never].",
    )(fn)
    return click.option(
        "--interval",
        type=click.FloatRange(min=0.01),
        default=5.0,
        show_default=True,
        envvar="DUBRUNNER_POLL_INTERVAL",
        help="Seconds between rounds at first; grows by half each round, up to a minute.",
    )(fn)


def preflight_options(fn: F) -> F:
    for option in reversed(
        [
            click.option(
                "--media-concurrency",
                type=click.IntRange(1, 128),
                default=8,
                show_default=True,
                help="Media URLs checked at once.",
            ),
            click.option(
                "--per-host",
                type=click.IntRange(1, 32),
                default=2,
                show_default=True,
                help="Media URLs checked at once on any one host.",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def open_store() -> Store:
    ctx = click.get_current_context()
    try:
        store = Store(ctx.meta.get("db"))
    except StoreError as exc:
        raise UserError(str(exc)) from None
    ctx.call_on_close(store.close)
    return store


def make_api(options: WorkerOptions, allow_insecure_http: bool) -> ApiClient:
    try:
        return ApiClient(
            Credentials.from_env(),
            max_connections=options.concurrency + 2,
            read_timeout=options.request_timeout,
            allow_insecure_http=allow_insecure_http,
        )
    except ConfigError as exc:
        raise UserError(str(exc)) from None


def read_manifest(path: str, max_bytes: int, max_jobs: int) -> Manifest:
    try:
        return load_manifest(path, max_bytes, max_jobs)
    except ManifestError as exc:
        for line in exc.lines():
            click.echo(f"error: {line}", err=True)
        n = len(exc.problems)
        raise UserError(
            f"{n} problem{'s' if n != 1 else ''} in {path}; nothing was loaded"
        ) from None


def manifest_limits(fn: F) -> F:
    fn = click.option(
        "--max-manifest-bytes",
        type=click.IntRange(1),
        default=DEFAULT_MAX_BYTES,
        envvar="DUBRUNNER_MAX_MANIFEST_BYTES",
        show_default=True,
        help="Refuse larger files.",
    )(fn)
    return click.option(
        "--max-jobs",
        type=click.IntRange(1),
        default=DEFAULT_MAX_JOBS,
        envvar="DUBRUNNER_MAX_JOBS",
        show_default=True,
        help="Refuse manifests with more jobs.",
    )(fn)


def say(text: str) -> None:
    if not click.get_current_context().meta.get("quiet"):
        click.echo(text, err=True)


@click.group(
    context_settings={"auto_envvar_prefix": "DUBRUNNER", "help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="dubrunner")
def cli() -> None:
    """Submit batches of lip-sync dubbing jobs to the Chamelaion API, each exactly once.

    Credentials come from CHAMELAION_API_KEY and/or CHAMELAION_BEARER_TOKEN, the API's address
    from CHAMELAION_BASE_URL. Every option can also be set as DUBRUNNER_<COMMAND>_<OPTION>.
    """


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@manifest_limits
@common_options
def validate(manifest: str, max_manifest_bytes: int, max_jobs: int) -> None:
    """Check a manifest without touching the database or the API."""
    m = read_manifest(manifest, max_manifest_bytes, max_jobs)
    click.echo(f"{manifest}: ok — batch {m.batch}, {len(m.jobs)} jobs")


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@worker_options
@manifest_limits
@click.option(
    "--dry-run", is_flag=True, help="Load nothing, send nothing: show what a run would do."
)
@click.option("--wait", is_flag=True, help="Then poll until every job has ended.")
@click.option(
    "--fetch",
    "fetch_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Then poll to the end and download the outputs into this directory.",
)
@click.option(
    "--preflight",
    is_flag=True,
    help="First check every media URL; jobs with bad media fail without being sent.",
)
@preflight_options
@poll_options
@common_options
def submit(
    manifest: str,
    options: WorkerOptions,
    allow_insecure_http: bool,
    wait: bool,
    fetch_dir: Path | None,
    interval: float,
    timeout: float | None,
    preflight: bool,
    media_concurrency: int,
    per_host: int,
    max_manifest_bytes: int,
    max_jobs: int,
    dry_run: bool,
) -> None:
    """Load MANIFEST into the job table and submit every job not yet at the API."""
    m = read_manifest(manifest, max_manifest_bytes, max_jobs)
    api = None if dry_run else make_api(options, allow_insecure_http)
    store = open_store()
    plan, summary = load_into(store, m, manifest, dry_run)
    if dry_run:
        click.echo(f"{summary}; a run would send {plan.to_send} job(s)")
        return
    say(summary)
    assert api is not None
    click.get_current_context().call_on_close(api.close)
    if preflight:
        report = run_preflight(unsent_pairs(store, m.batch), media_concurrency, per_host)
        reasons: dict[str, str] = {}
        for problem in report.problems:
            reasons.setdefault(
                problem.reference_id, f"preflight: {problem.which}: {problem.problem}"
            )
        store.fail_unsent(m.batch, reasons)
    result = run_batch(store, api, m.batch, options)
    if result.exit_code != 0 or not (wait or fetch_dir):
        finish(result)
    say(result.sentence())
    code = run_poll(store, api, m.batch, options, True, interval, timeout)
    if code == 0 and fetch_dir is not None:
        code = run_fetch(store, m.batch, fetch_dir, min(options.concurrency, 8))
    elif fetch_dir is not None and code == 1:
        # Some failed remotely: still download the ones that completed.
        fetched = run_fetch(store, m.batch, fetch_dir, min(options.concurrency, 8))
        code = fetched if fetched == EXIT_INTERRUPTED else code
    raise click.exceptions.Exit(code)


def load_into(store: Store, m: Manifest, path: str, dry_run: bool) -> tuple[LoadPlan, str]:
    try:
        plan = store.load(m.batch, m.jobs, path, dry_run=dry_run)
    except LoadConflict as exc:
        for problem in exc.problems[:50]:
            click.echo(f"error: {problem}", err=True)
        raise UserError(
            f"{len(exc.problems)} job(s) conflict with the database; nothing was loaded"
        ) from None
    summary = (
        f"batch {m.batch}: {len(plan.new)} new, {plan.unchanged} unchanged "
        f"({plan.already_submitted} already submitted), {len(plan.changed)} changed"
    )
    return plan, summary


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@manifest_limits
@click.option("--dry-run", is_flag=True, help="Write nothing: show what loading would do.")
@common_options
def load(manifest: str, max_manifest_bytes: int, max_jobs: int, dry_run: bool) -> None:
    """Load MANIFEST into the job table without sending anything (workers send: `work`)."""
    m = read_manifest(manifest, max_manifest_bytes, max_jobs)
    plan, summary = load_into(open_store(), m, manifest, dry_run)
    verb = "would send" if dry_run else "to send"
    click.echo(f"{summary}; {plan.to_send} job(s) {verb}")


@cli.command()
@click.option("--batch", help="Only this batch [default: every batch].")
@worker_options
@common_options
def resume(batch: str | None, options: WorkerOptions, allow_insecure_http: bool) -> None:
    """Continue pending and halted jobs, and reclaim those of dead workers (looked up first)."""
    work_on(batch, options, allow_insecure_http)


@cli.command()
@click.option("--batch", help="Only this batch [default: every batch].")
@click.option(
    "--follow",
    is_flag=True,
    envvar="DUBRUNNER_FOLLOW",
    help="Keep running: take jobs as they are loaded, until stopped (Ctrl-C / SIGTERM).",
)
@click.option(
    "--idle-poll",
    type=click.FloatRange(min=0.05),
    default=2.0,
    show_default=True,
    help="With --follow: seconds between looks for new jobs when idle.",
)
@worker_options
@common_options
def work(
    batch: str | None,
    follow: bool,
    idle_poll: float,
    options: WorkerOptions,
    allow_insecure_http: bool,
) -> None:
    """A worker for jobs loaded by `dubrunner load` (here or on another host)."""
    if follow:
        options = dataclasses.replace(options, follow=idle_poll)
    work_on(batch, options, allow_insecure_http, require_batch=not follow)


def work_on(
    batch: str | None, options: WorkerOptions, allow_insecure_http: bool, require_batch: bool = True
) -> NoReturn:
    api = make_api(options, allow_insecure_http)
    click.get_current_context().call_on_close(api.close)
    store = open_store()
    if require_batch:
        check_batch(store, batch)
    finish(run_batch(store, api, batch, options))


def run_batch(
    store: Store, api: ApiClient, batch: str | None, options: WorkerOptions
) -> BatchResult:
    ctx = click.get_current_context()
    counts = store.counts(batch)
    total = sum(n for s, n in counts.items() if s != State.CANCELLED)
    done = sum(counts.get(s, 0) for s in AT_API)
    run = BatchRun(store, api, batch, options)
    report = run.worker.report
    with ProgressDisplay("submitting", total, quiet(ctx)) as progress, _signals(run.request_stop):

        def tick() -> None:
            pending = total - done - report.submitted - report.failed - report.halted
            detail = f"failed {report.failed} · pending {max(pending, 0)} · "
            detail += f"{progress.rate(report.submitted):.1f} jobs/s"
            if run.governor.paused_for > 0:
                detail += " · paused by the server"
            if run.worker.waiting_for_others:
                detail += " · waiting for jobs other workers hold"
            progress.update(done + report.submitted + report.failed, detail)

        try:
            return run.execute(tick)
        except StoreError as exc:
            raise UserError(f"the database failed: {exc}") from None


def quiet(ctx: click.Context) -> bool:
    return bool(ctx.meta.get("quiet"))


def finish(result: BatchResult) -> NoReturn:
    sentence = result.sentence()
    if result.exit_code == 0:
        if not quiet(click.get_current_context()):
            click.echo(sentence, err=True)
    else:
        click.echo(("error: " if result.report.fatal else "") + sentence, err=True)
    sys.stderr.flush()
    raise click.exceptions.Exit(result.exit_code)


class _signals:
    """First Ctrl-C / SIGTERM: stop claiming, let in-flight requests finish. Second: quit now."""

    def __init__(self, request_stop: Callable[[], None]) -> None:
        self.request_stop = request_stop
        self.count = 0
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            self.request_stop()
            click.echo(
                "\nstopping: letting in-flight requests finish (press Ctrl-C again to quit now)",
                err=True,
            )
        else:
            # Still safe: claimed jobs stay 'submitting' and are looked up before any resend.
            os._exit(EXIT_INTERRUPTED)

    def __enter__(self) -> _signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def run_poll(
    store: Store,
    api: ApiClient,
    batch: str | None,
    options: WorkerOptions,
    wait: bool,
    interval: float,
    timeout: float | None,
) -> int:
    """Poll; print one sentence; return the exit code."""
    ctx = click.get_current_context()
    poller = Poller(
        store,
        api,
        options.governor(store, api),
        batch,
        options.concurrency,
    )
    total = poller.remaining()
    report = poller.report
    label = "polling" if wait else "polling once"
    with ProgressDisplay(label, total, quiet(ctx)) as progress, _signals(poller.request_stop):

        def tick() -> None:
            progress.update(
                report.completed + report.failed,
                f"round {report.rounds + 1} · completed {report.completed} · failed "
                f"{report.failed} · {report.requests} requests",
            )

        poller.run(wait, interval, timeout, tick)
    counts = store.counts(batch)
    still = counts.get(State.SUBMITTED, 0) + counts.get(State.PROCESSING, 0)
    failed_remote = store.count_remote_failures(batch)
    where = f"batch {batch}" if batch else "all batches"
    summary = (
        f"{where}: {counts.get(State.COMPLETED, 0)} completed, {failed_remote} failed remotely, "
        f"{still} still processing"
    )
    failure = None
    if report.halt_message:
        failure = f"{report.halt_message}; {summary} — fix it, then poll again"
    elif report.timed_out:
        failure = f"timed out waiting; {summary}"
    code = conclude(summary, failure, report.interrupted, report.fatal)
    return 1 if code == 0 and wait and (still or failed_remote) else code


def conclude(summary: str, failure: str | None, interrupted: bool, fatal: str | None) -> int:
    """The closing line of a poll or fetch, and its exit code."""
    if fatal:
        click.echo(f"error: {fatal}; {summary}", err=True)
        return 1
    if interrupted:
        click.echo(f"interrupted: {summary}", err=True)
        return EXIT_INTERRUPTED
    if failure:
        click.echo(f"error: {failure}", err=True)
        return 1
    if not quiet(click.get_current_context()):
        click.echo(summary, err=True)
    return 0


def run_fetch(store: Store, batch: str | None, out: Path, concurrency: int) -> int:
    ctx = click.get_current_context()
    fetcher = Fetcher(store, out, batch, concurrency)
    total = store.count_in_states(batch, [State.COMPLETED])
    report = fetcher.report
    with (
        ProgressDisplay("downloading", total, quiet(ctx)) as progress,
        _signals(fetcher.request_stop),
    ):

        def tick() -> None:
            done = report.downloaded + report.skipped + report.failed
            progress.update(
                done,
                f"{report.bytes / 1e6:.1f} MB · {progress.rate(report.bytes) / 1e6:.1f} MB/s"
                f" · failed {report.failed}",
            )

        fetcher.run(tick)
    summary = (
        f"{report.downloaded} downloaded ({report.bytes / 1e6:.1f} MB, {report.resumed} resumed), "
        f"{report.skipped} already there, {report.failed} failed, into {out}"
    )
    failure = f"{summary} — see `dubrunner status --format json`" if report.failed else None
    return conclude(summary, failure, report.interrupted, report.fatal)


@cli.command()
@click.option("--batch", help="Only this batch [default: every batch].")
@click.option("--wait", is_flag=True, help="Poll in rounds until every job has ended.")
@poll_options
@worker_options
@common_options
def poll(
    batch: str | None,
    wait: bool,
    interval: float,
    timeout: float | None,
    options: WorkerOptions,
    allow_insecure_http: bool,
) -> None:
    """Ask the API how every submitted job is doing: one request per job per round."""
    api = make_api(options, allow_insecure_http)
    click.get_current_context().call_on_close(api.close)
    store = open_store()
    check_batch(store, batch)
    raise click.exceptions.Exit(run_poll(store, api, batch, options, wait, interval, timeout))


@cli.command()
@click.option("--batch", help="Only this batch [default: every batch].")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    envvar="DUBRUNNER_FETCH_OUT",
    help="Directory; files go to OUT/<batch>/<reference_id>.<ext>.",
)
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@common_options
def fetch(batch: str | None, out: Path, concurrency: int) -> None:
    """Download every completed job's output (resumed, verified by SHA-256, never twice)."""
    store = open_store()
    check_batch(store, batch)
    raise click.exceptions.Exit(run_fetch(store, batch, out, concurrency))


@cli.command()
@click.option("--batch", help="Only this batch [default: every batch].")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True
)
@click.option("--out", "out", type=click.File("w"), default="-", help="File [default: stdout].")
@common_options
def export(batch: str | None, fmt: str, out: Any) -> None:
    """One row per job: the deliverable (reference_id, URLs, request_id, state, output, sha256)."""
    store = open_store()
    check_batch(store, batch)
    n = write_export(store.iter_rows(batch), fmt, out)
    if out is not sys.stdout:
        say(f"{n} job(s) exported to {out.name}")


def run_preflight(pairs: list[Pair], concurrency: int, per_host: int) -> PreflightReport:
    ctx = click.get_current_context()
    preflight = Preflight(concurrency, per_host)
    try:
        with (
            ProgressDisplay("checking media", None, quiet(ctx)) as progress,
            _signals(preflight.stop.set),
        ):
            report = preflight.run(
                pairs, lambda done, total: progress.update(done, f"{done} of {total} URLs")
            )
    finally:
        preflight.close()
    if report.problems:
        print_media_problems(report.problems, table_console())
    say(
        f"checked {report.checked} media URL(s) of {report.jobs} job(s): "
        f"{len(report.bad_references)} job(s) with a problem"
    )
    return report


@cli.command()
@click.argument("target")
@manifest_limits
@preflight_options
@common_options
def check(
    target: str, max_manifest_bytes: int, max_jobs: int, media_concurrency: int, per_host: int
) -> None:
    """Check the media URLs of a manifest file or a batch before paying for anything."""
    if Path(target).is_file():
        m = read_manifest(target, max_manifest_bytes, max_jobs)
        pairs = [Pair(j.reference_id, j.video_url, j.audio_url) for j in m.jobs]
    else:
        store = open_store()
        if target not in store.batches():
            raise UserError(f"{target!r} is neither a manifest file nor a batch in the database")
        pairs = unsent_pairs(store, target)
    report = run_preflight(pairs, media_concurrency, per_host)
    raise click.exceptions.Exit(1 if report.problems else 0)


def unsent_pairs(store: Store, batch: str) -> list[Pair]:
    unsent = {State.PENDING, State.HALTED, State.FAILED}
    return [
        Pair(r.reference_id, r.video_url, r.audio_url)
        for r in store.iter_rows(batch)
        if r.state in unsent and not r.request_id and not r.lookup_needed
    ]


def check_batch(store: Store, batch: str | None) -> None:
    if batch is not None and batch not in store.batches():
        raise UserError(f"no batch {batch!r} in the database")


@cli.command()
@click.argument("reference_id", required=False)
@click.option("--batch", help="Only this batch.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in State]),
    help="Only jobs in this state (repeatable).",
)
@click.option(
    "--limit", type=click.IntRange(0), default=50, show_default=True, help="Rows to show (0: all)."
)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@common_options
def status(
    reference_id: str | None, batch: str | None, states: tuple[str, ...], limit: int, fmt: str
) -> None:
    """Where is every job? A summary per batch and state, then the rows; or one job in full."""
    store = open_store()
    console = table_console()
    if reference_id:
        rows = store.rows(reference_ids=[reference_id])
        if not rows:
            raise UserError(f"no job with reference_id {reference_id!r}")
        if fmt == "json":
            print_json(rows, sys.stdout)
        elif fmt == "csv":
            print_csv(rows, sys.stdout)
        else:
            print_job_detail(rows[0], store.attempts_of(reference_id), console)
        return
    rows = store.rows(batch, states, limit or None)
    if fmt == "json":
        print_json(rows, sys.stdout)
    elif fmt == "csv":
        print_csv(rows, sys.stdout)
    else:
        summary = store.summary(batch)
        matching = sum(n for _b, s, n in summary if not states or s in states)
        if not summary:
            click.echo("no jobs yet: `dubrunner submit MANIFEST` loads some")
            return
        print_status_table(summary, rows, matching, console)


@cli.command()
@click.option("--batch", help="Only this batch.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(sorted(RETRYABLE)),
    help="Which jobs to put back [default: failed and halted].",
)
@click.option("--error", "error", help="Only jobs whose last error contains this text.")
@common_options
def retry(batch: str | None, states: tuple[str, ...], error: str | None) -> None:
    """Put failed or halted jobs back to pending (their history is kept); then `resume`."""
    store = open_store()
    n = store.retry(batch, states or sorted(RETRYABLE), error)
    click.echo(
        f"{n} job(s) put back to pending" + (" — `dubrunner resume` sends them" if n else "")
    )


@cli.command()
@click.option("--batch", help="Only this batch.")
@click.option("--ref", "refs", multiple=True, help="Only this reference_id (repeatable).")
@click.option("--all-pending", is_flag=True, help="Needed to cancel without --batch or --ref.")
@common_options
def cancel(batch: str | None, refs: tuple[str, ...], all_pending: bool) -> None:
    """Take pending jobs out of their batch (they are never sent)."""
    if not (batch or refs or all_pending):
        raise UserError("say which jobs: --batch, --ref, or --all-pending")
    store = open_store()
    n, kept = store.cancel(batch, refs)
    click.echo(f"{n} pending job(s) cancelled")
    if kept:
        click.echo(
            f"{kept} pending job(s) kept: an earlier request for them may have reached the API; "
            "`dubrunner resume` looks them up first",
            err=True,
        )


@cli.command()
@click.option("--allow-insecure-http", is_flag=True, help="As for submit.")
@common_options
def doctor(allow_insecure_http: bool) -> None:
    """Check the set-up end to end: credentials, the API, the database, the clock."""
    from rich.table import Table

    from dubrunner.doctor import diagnose

    findings = diagnose(click.get_current_context().meta.get("db"), allow_insecure_http)
    table = Table(title="dubrunner doctor", title_justify="left")
    for name in ("check", "", "finding"):
        table.add_column(name, overflow="fold")
    for f in findings:
        table.add_row(f.check, "ok" if f.ok else "PROBLEM", scrub(f.detail))
    table_console().print(table)
    bad = [f for f in findings if not f.ok]
    if bad:
        click.echo(f"error: {len(bad)} problem(s): " + "; ".join(f.check for f in bad), err=True)
    raise click.exceptions.Exit(1 if bad else 0)


@cli.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@common_options
def db_upgrade() -> None:
    """Create or migrate the database to the newest schema (also done on first use)."""
    ctx = click.get_current_context()
    try:
        store = Store(ctx.meta.get("db"), migrate=False)
        before, after = store.upgrade()
        store.close()
    except StoreError as exc:
        raise UserError(str(exc)) from None
    click.echo(f"database at revision {after}" + (f" (was {before})" if before != after else ""))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8787,
    show_default=True,
    help="0 picks a free port.",
)
@click.option(
    "--port-file", type=click.Path(dir_okay=False), help="Write the port here once listening."
)
@click.option(
    "--token",
    "tokens",
    multiple=True,
    default=["test-token"],
    show_default=True,
    help="An accepted credential (repeatable).",
)
@click.option("--rate", type=float, help="Requests per second before 429.")
@click.option("--p500", type=click.FloatRange(0, 1), default=0.0, help="Chance of a 500.")
@click.option("--latency-ms", type=click.FloatRange(0), default=0.0)
@click.option(
    "--token-limit", type=click.IntRange(0), help="Accepted jobs before 'token limit reached'."
)
@click.option("--token-limit-status", type=int, default=429, show_default=True)
@click.option(
    "--drop-after-accept",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Chance of dropping the connection after accepting a job.",
)
@click.option(
    "--complete-after",
    type=click.FloatRange(0),
    default=1.0,
    show_default=True,
    help="Seconds until a job completes.",
)
@click.option("--seed", type=int)
def emulator(
    host: str,
    port: int,
    port_file: str | None,
    tokens: tuple[str, ...],
    rate: float | None,
    p500: float,
    latency_ms: float,
    token_limit: int | None,
    token_limit_status: int,
    drop_after_accept: float,
    complete_after: float,
    seed: int | None,
) -> None:
    """Run the local API emulator (for the demo and tests) until interrupted."""
    from dubrunner.emulator import Emulator, EmulatorConfig

    config = EmulatorConfig(
        tokens=tokens,
        rate=rate,
        p500=p500,
        latency_ms=latency_ms,
        token_limit=token_limit,
        token_limit_status=token_limit_status,
        drop_after_accept=drop_after_accept,
        complete_after=complete_after,
        seed=seed,
    )
    try:
        emu = Emulator(config, host=host, port=port)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    click.echo(f"emulator listening on {emu.base_url}", err=True)
    if port_file:
        Path(port_file).write_text(str(emu.port))
    try:
        emu.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()


def main() -> None:
    try:
        # Without standalone mode click returns a command's exit code instead of raising it.
        code = cli.main(prog_name="dubrunner", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:
        if os.environ.get("DUBRUNNER_DEBUG"):
            raise
        click.echo(
            f"internal error: {type(exc).__name__}: {scrub(str(exc))} "
            "(set DUBRUNNER_DEBUG=1 for the traceback, and please report it)",
            err=True,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
