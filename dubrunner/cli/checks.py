"""Before and around a run: check (preflight), doctor."""

from __future__ import annotations

from pathlib import Path

import click

from dubrunner.cli.common import (
    COMMON_OPTIONS,
    MANIFEST_LIMITS,
    PREFLIGHT_OPTIONS,
    ManifestLimits,
    UserError,
    cli,
    open_store,
    quiet,
    say,
    stop_on_signals,
)
from dubrunner.output import (
    ProgressDisplay,
    plain,
    print_media_problems,
    table_console,
)
from dubrunner.preflight import Pair, Preflight, PreflightReport
from dubrunner.redact import scrub
from dubrunner.runner import EXIT_INTERRUPTED
from dubrunner.states import State
from dubrunner.store import Store


def run_preflight(pairs: list[Pair], concurrency: int, per_host: int) -> PreflightReport:
    ctx = click.get_current_context()
    preflight = Preflight(concurrency, per_host)
    try:
        with (
            ProgressDisplay("checking media", None, quiet(ctx)) as progress,
            stop_on_signals(preflight.stop.set),
        ):
            report = preflight.run(
                pairs, lambda done, total: progress.update(done, f"{done} of {total} URLs")
            )
    finally:
        preflight.close()
    if report.problems:
        print_media_problems(report.problems, table_console())
    bad = len(report.bad_references)
    if report.interrupted:
        click.echo(
            f"interrupted: checked {report.checked} of {report.urls} media URL(s) of "
            f"{report.jobs} job(s) before the stop: {bad} job(s) with a problem so far",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_INTERRUPTED)
    say(
        f"checked {report.checked} media URL(s) of {report.jobs} job(s): "
        f"{bad} job(s) with a problem"
    )
    return report


@cli.command()
@click.argument("target")
@MANIFEST_LIMITS
@PREFLIGHT_OPTIONS
@COMMON_OPTIONS
def check(target: str, limits: ManifestLimits, media_concurrency: int, per_host: int) -> None:
    """Check the media URLs of a manifest file or a batch before paying for anything."""
    if Path(target).is_file():
        m = limits.read(target)
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
        if r.state in unsent and not r.request_id and not r.lookup_owed
    ]


@cli.command()
@click.option("--allow-insecure-http", is_flag=True, help="As for submit.")
@COMMON_OPTIONS
def doctor(allow_insecure_http: bool) -> None:
    """Check the set-up end to end: credentials, the API, the database, the clock."""
    from rich.table import Table

    from dubrunner.doctor import diagnose

    findings = diagnose(click.get_current_context().meta.get("db"), allow_insecure_http)
    table = Table(title="dubrunner doctor", title_justify="left")
    for name in ("check", "", "finding"):
        table.add_column(name, overflow="fold")
    for f in findings:
        table.add_row(f.check, "ok" if f.ok else "PROBLEM", plain(scrub(f.detail)))
    table_console().print(table)
    bad = [f for f in findings if not f.ok]
    if bad:
        click.echo(f"error: {len(bad)} problem(s): " + "; ".join(f.check for f in bad), err=True)
    raise click.exceptions.Exit(1 if bad else 0)
