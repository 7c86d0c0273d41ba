"""After submitting: poll, fetch, export."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from dubrunner.api import ApiClient
from dubrunner.cli.common import (
    COMMON_OPTIONS,
    POLL_OPTIONS,
    WORKER_OPTIONS,
    check_batch,
    cli,
    conclude,
    make_api,
    open_store,
    quiet,
    say,
    stop_on_signals,
)
from dubrunner.fetcher import Fetcher
from dubrunner.output import (
    ProgressDisplay,
    write_export,
)
from dubrunner.poller import Poller
from dubrunner.states import State
from dubrunner.store import Store
from dubrunner.worker import WorkerOptions


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
    with (
        ProgressDisplay(label, total, quiet(ctx)) as progress,
        stop_on_signals(poller.request_stop),
    ):

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


def run_fetch(store: Store, batch: str | None, out: Path, concurrency: int) -> int:
    ctx = click.get_current_context()
    fetcher = Fetcher(store, out, batch, concurrency)
    total = store.count_in_states(batch, [State.COMPLETED])
    report = fetcher.report
    with (
        ProgressDisplay("downloading", total, quiet(ctx)) as progress,
        stop_on_signals(fetcher.request_stop),
    ):

        def tick() -> None:
            done = report.downloaded + report.skipped + report.failed
            progress.update(
                done,
                f"{report.bytes / 1e6:.1f} MB · {progress.rate(report.bytes) / 1e6:.1f} MB/s"
                f" · failed {report.failed}",
            )

        fetcher.run(tick)
    restarted = f", {report.restarted} started over" if report.restarted else ""
    summary = (
        f"{report.downloaded} downloaded ({report.bytes / 1e6:.1f} MB, {report.resumed} resumed"
        f"{restarted}), {report.skipped} already there, {report.failed} failed, into {out}"
    )
    failure = None
    if report.failed:
        failure = f"{summary} — see `dubrunner status --format json`"
    elif report.busy:
        failure = (
            f"{summary}; {report.busy} being downloaded by another dubrunner fetch right now "
            "— run fetch again once it has ended"
        )
    return conclude(summary, failure, report.interrupted, report.fatal)


@cli.command()
@click.option("--batch", help="Only this batch [default: every batch].")
@click.option("--wait", is_flag=True, help="Poll in rounds until every job has ended.")
@POLL_OPTIONS
@WORKER_OPTIONS
@COMMON_OPTIONS
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
@COMMON_OPTIONS
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
@COMMON_OPTIONS
def export(batch: str | None, fmt: str, out: Any) -> None:
    """One row per job: the deliverable (reference_id, URLs, request_id, state, output, sha256)."""
    store = open_store()
    check_batch(store, batch)
    n = write_export(store.iter_rows(batch), fmt, out)
    if out is not sys.stdout:
        say(f"{n} job(s) exported to {out.name}")
