"""Loading and submitting: validate, submit, load, resume, work."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NoReturn

import click

from dubrunner.api import ApiClient
from dubrunner.cli.checks import run_preflight, unsent_pairs
from dubrunner.cli.common import (
    COMMON_OPTIONS,
    HOUR,
    MANIFEST_LIMITS,
    POLL_OPTIONS,
    PREFLIGHT_OPTIONS,
    WORKER_OPTIONS,
    ManifestLimits,
    Seconds,
    UserError,
    check_batch,
    cli,
    finish,
    make_api,
    open_store,
    quiet,
    say,
    stop_on_signals,
)
from dubrunner.cli.results import run_fetch, run_poll
from dubrunner.manifest import Manifest
from dubrunner.output import (
    ProgressDisplay,
)
from dubrunner.records import LoadPlan
from dubrunner.runner import EXIT_INTERRUPTED, BatchResult, BatchRun
from dubrunner.states import AT_API, State
from dubrunner.store import LoadConflict, Store, StoreError
from dubrunner.worker import WorkerOptions


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@MANIFEST_LIMITS
@COMMON_OPTIONS
def validate(manifest: str, limits: ManifestLimits) -> None:
    """Check a manifest without touching the database or the API."""
    m = limits.read(manifest)
    click.echo(f"{manifest}: ok — batch {m.batch}, {len(m.jobs)} jobs")


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@WORKER_OPTIONS
@MANIFEST_LIMITS
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
@PREFLIGHT_OPTIONS
@POLL_OPTIONS
@COMMON_OPTIONS
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
    limits: ManifestLimits,
    dry_run: bool,
) -> None:
    """Load MANIFEST into the job table and submit every job not yet at the API."""
    m = limits.read(manifest)
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
@MANIFEST_LIMITS
@click.option("--dry-run", is_flag=True, help="Write nothing: show what loading would do.")
@COMMON_OPTIONS
def load(manifest: str, limits: ManifestLimits, dry_run: bool) -> None:
    """Load MANIFEST into the job table without sending anything (workers send: `work`)."""
    m = limits.read(manifest)
    plan, summary = load_into(open_store(), m, manifest, dry_run)
    verb = "would send" if dry_run else "to send"
    click.echo(f"{summary}; {plan.to_send} job(s) {verb}")


@cli.command()
@click.option("--batch", help="Only this batch [default: every batch].")
@WORKER_OPTIONS
@COMMON_OPTIONS
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
    type=Seconds(0.05, HOUR),
    default=2.0,
    show_default=True,
    help="With --follow: seconds between looks for new jobs when idle.",
)
@WORKER_OPTIONS
@COMMON_OPTIONS
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
    with (
        ProgressDisplay("submitting", total, quiet(ctx)) as progress,
        stop_on_signals(run.request_stop),
    ):

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
