"""After submitting: poll, fetch, export."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dubrunner.cli.common import (
    BATCH,
    COMMON_OPTIONS,
    LOCAL_OPTIONS,
    MACHINE_FORMATS,
    POLL_OPTIONS,
    WORKER_OPTIONS,
    SectionedCommand,
    TerminalUi,
    check_batch,
    cli,
    end,
    make_api,
    open_store,
    say,
)

if TYPE_CHECKING:
    from dubrunner.sessions import Polling
    from dubrunner.worker import WorkerOptions


@cli.command(cls=SectionedCommand)
@BATCH
@click.option("--wait", is_flag=True, help="Poll in rounds until every job has ended.")
@POLL_OPTIONS
@WORKER_OPTIONS
@COMMON_OPTIONS
def poll(
    batch: str | None,
    wait: bool,
    polling: Polling,
    options: WorkerOptions,
    allow_insecure_http: bool,
) -> None:
    """Ask the API how every submitted job is doing: one request per job per round."""
    from dubrunner import sessions

    api = make_api(options, allow_insecure_http)
    store = open_store(must_exist=True)
    check_batch(store, batch)
    end(sessions.poll(store, api, batch, options, TerminalUi(), wait=wait, polling=polling))


@cli.command()
@BATCH
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    envvar="DUBRUNNER_FETCH_OUT",
    help="Directory; files go to OUT/<batch>/<reference_id>.<ext>.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Downloads at once.",
)
@COMMON_OPTIONS
def fetch(batch: str | None, out: Path, concurrency: int) -> None:
    """Download every completed job's output (resumed, verified by SHA-256, never twice)."""
    from dubrunner import sessions

    store = open_store(must_exist=True)
    check_batch(store, batch)
    end(sessions.fetch(store, batch, out, concurrency, TerminalUi()))


@cli.command()
@BATCH
@click.option(
    "--format",
    type=click.Choice(MACHINE_FORMATS),
    default="csv",
    show_default=True,
    help="csv (with a header), json (one array) or jsonl (an object a line); as in status.",
)
@click.option("--out", "out", type=click.File("w"), default="-", help="File [default: stdout].")
@LOCAL_OPTIONS
def export(batch: str | None, format: str, out: Any) -> None:
    """One row per job: the deliverable (reference_id, URLs, request_id, state, output, sha256)."""
    from dubrunner.output import write_export

    store = open_store(must_exist=True)
    check_batch(store, batch)
    n = write_export(store.iter_rows(batch), format, out)
    to_file = out.name not in ("-", "<stdout>")
    say(f"{n} job(s) exported" + (f" to {out.name}" if to_file else ""))
