"""After submitting: poll, fetch, export."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from dubrunner import sessions
from dubrunner.api import ApiClient, ConfigError, Credentials
from dubrunner.cli.common import (
    COMMON_OPTIONS,
    POLL_OPTIONS,
    WORKER_OPTIONS,
    TerminalUi,
    UserError,
    check_batch,
    cli,
    end,
    make_api,
    open_store,
    say,
)
from dubrunner.output import write_export
from dubrunner.sessions import Polling
from dubrunner.worker import WorkerOptions


@cli.command()
@click.option("--batch", help="Only this batch [default: every batch].")
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
    """Ask the API how every submitted job is doing: a round reads the list of requests, a page
    of 100 at a time, and asks for the few jobs not seen there one by one."""
    api = make_api(options, allow_insecure_http)
    store = open_store()
    check_batch(store, batch)
    end(sessions.poll(store, api, batch, options, TerminalUi(), wait=wait, polling=polling))


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
@click.option(
    "--allow-insecure-http",
    is_flag=True,
    envvar="DUBRUNNER_ALLOW_INSECURE_HTTP",
    help="Allow credentials over plain http to a host other than loopback.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Hash every file already there again (by default only those changed since they were "
    "downloaded); a file whose SHA-256 differs from the one recorded is downloaded again.",
)
@COMMON_OPTIONS
def fetch(
    batch: str | None, out: Path, concurrency: int, allow_insecure_http: bool, verify: bool
) -> None:
    """Download every completed job's output (resumed, checked by size and SHA-256, never
    twice). An output URL that expired is asked of the API afresh (needs the credentials)."""
    store = open_store()
    check_batch(store, batch)
    api = None
    if Credentials.from_env():
        try:
            api = ApiClient(Credentials.from_env(), allow_insecure_http=allow_insecure_http)
        except ConfigError as exc:
            raise UserError(str(exc)) from None
        click.get_current_context().call_on_close(api.close)
    end(sessions.fetch(store, batch, out, concurrency, TerminalUi(), api, verify))


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
