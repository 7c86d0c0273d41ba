"""After submitting: poll, fetch, export."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from dubrunner.cli.common import (
    BATCH,
    COMMON_OPTIONS,
    LOCAL_OPTIONS,
    MACHINE_FORMATS,
    ON_DONE,
    POLL_OPTIONS,
    WORKER_OPTIONS,
    SectionedCommand,
    TerminalUi,
    UserError,
    check_batch,
    cli,
    end,
    hook_for,
    make_api,
    open_store,
    output_file,
    say,
)

if TYPE_CHECKING:
    from dubrunner.hooks import OnDone
    from dubrunner.sessions import Polling
    from dubrunner.worker import WorkerOptions


@cli.command(cls=SectionedCommand)
@BATCH
@click.option("--wait", is_flag=True, help="Poll in rounds until every job has ended.")
@POLL_OPTIONS
@WORKER_OPTIONS
@ON_DONE
@COMMON_OPTIONS
def poll(
    batch: str | None,
    wait: bool,
    polling: Polling,
    options: WorkerOptions,
    allow_insecure_http: bool,
    on_done: OnDone | None,
) -> None:
    """Ask the API how every submitted job is doing: a round reads the list of requests, a page
    of 100 at a time, and asks for the few jobs not seen there one by one."""
    from dubrunner import sessions

    api = make_api(options, allow_insecure_http)
    store = open_store(must_exist=True)
    check_batch(store, batch)
    ending = sessions.poll(store, api, batch, options, TerminalUi(), wait=wait, polling=polling)
    end(ending, hook_for(on_done, store, batch))


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
    from dubrunner import sessions
    from dubrunner.api import ApiClient, ConfigError, Credentials

    store = open_store(must_exist=True)
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
@BATCH
@click.option(
    "--format",
    type=click.Choice(MACHINE_FORMATS),
    default="csv",
    show_default=True,
    help="csv (with a header), json (one array) or jsonl (an object a line); as in status.",
)
@click.option("--out", "out", type=click.Path(path_type=Path), help="File [default: stdout].")
@LOCAL_OPTIONS
def export(batch: str | None, format: str, out: Path | None) -> None:
    """One row per job: the deliverable (reference_id, URLs, request_id, state, output, sha256)."""
    from dubrunner.output import write_export

    store = open_store(must_exist=True)
    check_batch(store, batch)
    with output_file(out) as stream:
        n = write_export(store.iter_rows(batch), format, stream)
    to_file = out is not None and str(out) != "-"
    say(f"{n} job(s) exported" + (f" to {out}" if to_file else ""))
