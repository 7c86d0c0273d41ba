"""Looking at and steering jobs: status, retry, cancel, supersede."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from dubrunner.cli.common import (
    BATCH,
    FORMATS,
    LOCAL_OPTIONS,
    MACHINE_FORMATS,
    UserError,
    check_batch,
    check_refs,
    cli,
    complete_reference_id,
    database_file,
    is_quiet,
    open_store,
    say,
)
from dubrunner.redact import shown
from dubrunner.states import RETRY_FROM, State

if TYPE_CHECKING:
    from dubrunner.store import Store

# A worker's word on the API counts for `status` this long (it refreshes it while in trouble).
API_HEALTH_FRESH = 120.0
TABLE_ROWS = 50  # the table's default length
REFS = click.option(
    "--ref",
    "refs",
    multiple=True,
    help="Only this reference_id (repeatable).",
    shell_complete=complete_reference_id,
)
NO_JOBS = "no jobs yet: `dubrunner submit MANIFEST` loads some"


@cli.command()
@click.argument("reference_id", required=False, shell_complete=complete_reference_id)
@BATCH
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in State]),
    help="Only jobs in this state (repeatable).",
)
@click.option(
    "--limit",
    type=click.IntRange(0),
    help="Rows to show, 0 for all [default: 50 in the table, every row in json/jsonl/csv].",
)
@click.option(
    "--format",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="A table for people; json, jsonl or csv (every field, on stdout alone) for scripts.",
)
@click.option(
    "--wide",
    is_flag=True,
    help="The table with every column and whole request_ids and errors, however wide.",
)
@click.option(
    "--summary",
    is_flag=True,
    help="Only the number of jobs per batch and state (in json: [{batch, state, jobs}, ...]).",
)
@LOCAL_OPTIONS
def status(
    reference_id: str | None,
    batch: str | None,
    states: tuple[str, ...],
    limit: int | None,
    format: str,
    wide: bool,
    summary: bool,
) -> None:
    """Where is every job? A summary per batch and state, then the rows; or one job in full."""
    file = database_file(create=False)
    the_table = not (summary or reference_id or batch or format in MACHINE_FORMATS)
    if the_table and file is not None and file.no_jobs_yet:
        # All _table says of it, said without importing SQLAlchemy (~0.1 s instead of ~0.4 s).
        click.echo(NO_JOBS, err=True)
        return
    store = open_store(must_exist=True)
    check_batch(store, batch)
    if summary:
        _summary(store, batch, states, format)
    elif reference_id:
        _one_job(store, reference_id, format)
    elif format in MACHINE_FORMATS:
        from dubrunner.output import write_rows

        if limit:
            write_rows(store.rows(batch, states, limit), format, sys.stdout)
        else:
            write_rows(store.iter_rows(batch, states=states), format, sys.stdout)
    else:
        _table(store, batch, states, limit, wide)


def _summary(store: Store, batch: str | None, states: tuple[str, ...], format: str) -> None:
    from dubrunner.output import print_status_table, table_console, write_dicts
    from dubrunner.queries import SUMMARY_FIELDS, summary_item

    counts = [(b, s, n) for b, s, n in store.summary(batch) if not states or s in states]
    if format in MACHINE_FORMATS:
        items = (summary_item(*row) for row in counts)
        write_dicts(items, SUMMARY_FIELDS, format, sys.stdout)
    else:
        print_status_table(counts, [], 0, table_console())


def _one_job(store: Store, reference_id: str, format: str) -> None:
    rows = store.rows(reference_ids=[reference_id])
    if not rows:
        raise UserError(f"no job with reference_id {reference_id!r}")
    from dubrunner.output import print_job_detail, table_console, write_rows

    if format in MACHINE_FORMATS:
        write_rows(rows, format, sys.stdout)
    else:
        print_job_detail(rows[0], store.attempts_of(reference_id), table_console())


def _table(
    store: Store, batch: str | None, states: tuple[str, ...], limit: int | None, wide: bool
) -> None:
    per_state = store.summary(batch)
    if not per_state:
        click.echo(NO_JOBS, err=True)
        return
    from dubrunner.output import print_status_table, table_console

    shown_rows = TABLE_ROWS if limit is None else limit
    rows = store.rows(batch, states, shown_rows or None)
    matching = sum(n for _b, s, n in per_state if not states or s in states)
    print_status_table(per_state, rows, matching, table_console(), wide)
    if len(rows) < matching and not is_quiet():
        click.echo(f"{len(rows):,} of {matching:,} shown — `--limit 0` for all", err=True)
    superseded = store.count_superseded(batch)
    if superseded and not is_quiet():
        click.echo(
            f"{superseded:,} superseded job(s) not counted or shown — `dubrunner status REF` "
            "shows one",
            err=True,
        )
    for view in store.api_health(time.time() - API_HEALTH_FRESH):
        from dubrunner.health import describe_view  # only then: it imports httpx (~0.1 s)

        trouble = describe_view(view)
        if trouble:
            click.echo(f"note: {shown(trouble)}", err=True)


@cli.command()
@BATCH
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(sorted(s.value for s in RETRY_FROM)),
    help="Which jobs to put back [default: failed and halted].",
)
@click.option("--error", "error", help="Only jobs whose last error contains this text.")
@REFS
@click.option(
    "--yes",
    is_flag=True,
    help="Also send again jobs that already ran at the API and failed there (paid again).",
)
@LOCAL_OPTIONS
def retry(
    batch: str | None, states: tuple[str, ...], error: str | None, refs: tuple[str, ...], yes: bool
) -> None:
    """Put failed or halted jobs back to pending (their history is kept); then `resume`."""
    store = open_store(must_exist=True)
    check_batch(store, batch)
    check_refs(store, refs, batch)
    chosen = states or sorted(RETRY_FROM)
    _, ran = store.retry_preview(batch, chosen, error, refs)
    if ran and not yes:
        warning = (
            f"{ran} of these jobs failed at the API after running; sending them again is "
            "charged again"
        )
        if not (sys.stdin.isatty() and click.confirm(f"{warning}. Put them back?", err=True)):
            raise UserError(f"{warning} — add --yes to retry them; nothing was changed")
    done = store.retry(batch, chosen, error, refs)
    n = done.pending
    line = f"{n} job(s) put back to pending" + (" — `dubrunner resume` sends them" if n else "")
    if done.polled:
        line += (
            f"; {done.polled} the API finished without an output URL put back to polling "
            "(never sent again: the API did them) — `dubrunner poll` asks for their output"
        )
    say(line)


@cli.command()
@BATCH
@REFS
@click.option("--all-pending", is_flag=True, help="Needed to cancel without --batch or --ref.")
@LOCAL_OPTIONS
def cancel(batch: str | None, refs: tuple[str, ...], all_pending: bool) -> None:
    """Take pending jobs out of their batch (they are never sent)."""
    if not (batch or refs or all_pending):
        raise UserError("say which jobs: --batch, --ref, or --all-pending")
    store = open_store(must_exist=True)
    check_batch(store, batch)
    check_refs(store, refs, batch)
    n, kept, restored = store.cancel(batch, refs)
    say(f"{n} pending job(s) cancelled")
    for ref in restored:
        say(f"{ref} is current again: the job that superseded it was cancelled before being sent")
    if kept:
        click.echo(
            f"{kept} pending job(s) kept: an earlier request for them may have reached the API; "
            "`dubrunner resume` looks them up first",
            err=True,
        )


@cli.command()
@click.argument("reference_id", shell_complete=complete_reference_id)
@click.option(
    "--video", help="The new job's video: an http(s) URL or a local file [default: as before]."
)
@click.option(
    "--audio", help="The new job's audio: an http(s) URL or a local file [default: as before]."
)
@click.option(
    "--disable-active-speaker-detection/--active-speaker-detection",
    "disable_asd",
    default=None,
    help="The new job's setting [default: as before].",
)
@click.option(
    "--allow-same-media",
    is_flag=True,
    help="Even when these video and audio are another job's already (paid again).",
)
@LOCAL_OPTIONS
def supersede(
    reference_id: str,
    video: str | None,
    audio: str | None,
    disable_asd: bool | None,
    allow_same_media: bool,
) -> None:
    """Replace a job that was sent by a new one, REF~2 (REF~3 after that), to be sent by the
    next `resume`; the old one keeps its row and history (`status REF`) but leaves its batch's
    counts and exports, and its request is never sent again. A job never sent is not superseded:
    change it in the manifest and submit again."""
    from pathlib import Path

    from dubrunner.cli.common import cached_digests
    from dubrunner.superseding import SpecOf, SupersedeRefused

    store = open_store(must_exist=True)
    spec_of = SpecOf(video, audio, disable_asd, Path.cwd(), cached_digests())
    try:
        done = store.supersede(reference_id, spec_of, allow_same_media)
    except SupersedeRefused as exc:
        raise UserError(f"{exc}; nothing was changed") from None
    redo = (
        " (it had completed: this is a redo, paid again)" if done.state == State.COMPLETED else ""
    )
    say(
        f"{done.old} superseded by {done.new}{redo}; nothing sent yet — "
        f"`dubrunner resume --batch {done.batch}` sends {done.new}"
    )
