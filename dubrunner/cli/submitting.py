"""Loading and submitting: validate, submit, load, resume, work."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from dubrunner.cli.common import (
    BATCH,
    COMMON_OPTIONS,
    HOUR,
    LOCAL_OPTIONS,
    MANIFEST_LIMITS,
    OFFLINE_OPTIONS,
    ON_DONE,
    POLL_OPTIONS,
    PREFLIGHT_OPTIONS,
    WORKER_OPTIONS,
    ManifestLimits,
    Seconds,
    SectionedCommand,
    TerminalUi,
    cached_digests,
    check_batch,
    cli,
    end,
    hook_for,
    make_api,
    open_store,
    say,
)

if TYPE_CHECKING:
    from dubrunner.hooks import OnDone
    from dubrunner.loadsession import Loaded
    from dubrunner.manifest import Manifest
    from dubrunner.sessions import MediaCheck, Polling
    from dubrunner.worker import WorkerOptions

SUPERSEDE = click.option(
    "--supersede",
    is_flag=True,
    help="A job already sent whose inputs the manifest changed: replace it with a new job "
    "(REF~2) instead of refusing the load (see `dubrunner supersede`).",
)
SAME_MEDIA = click.option(
    "--allow-same-media",
    is_flag=True,
    help="Load jobs whose video and audio were loaded before under another reference_id "
    "(each is paid again).",
)


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@MANIFEST_LIMITS
@OFFLINE_OPTIONS
def validate(manifest: str, limits: ManifestLimits) -> None:
    """Check a manifest without touching the database or the API."""
    m = limits.read(manifest)
    say(f"{manifest}: ok — batch {m.batch}, {len(m.jobs)} jobs")


@cli.command(cls=SectionedCommand)
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
@SAME_MEDIA
@SUPERSEDE
@PREFLIGHT_OPTIONS
@POLL_OPTIONS
@ON_DONE
@COMMON_OPTIONS
def submit(
    manifest: str,
    options: WorkerOptions,
    allow_insecure_http: bool,
    limits: ManifestLimits,
    dry_run: bool,
    wait: bool,
    fetch_dir: Path | None,
    preflight: bool,
    media: MediaCheck,
    polling: Polling,
    allow_same_media: bool,
    on_done: OnDone | None,
    supersede: bool,
) -> None:
    """Load MANIFEST into the job table and submit every job not yet at the API."""
    m = limits.read(manifest, cached_digests())
    if dry_run:
        loaded = _load(m, True, allow_same_media, supersede)
        say(f"{loaded.summary}; a run would send {loaded.plan.to_send} job(s)")
        return
    from dubrunner import sessions

    api = make_api(options, allow_insecure_http)  # before the store: no credentials, no file
    store = open_store()
    ending = sessions.submit(
        store,
        api,
        m,
        options,
        TerminalUi(),
        media=media if preflight else None,
        wait=wait,
        polling=polling,
        fetch_into=fetch_dir,
        allow_same_media=allow_same_media,
        supersede=supersede,
    )
    end(ending, hook_for(on_done, store, m.batch))


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@MANIFEST_LIMITS
@click.option("--dry-run", is_flag=True, help="Write nothing: show what loading would do.")
@SAME_MEDIA
@SUPERSEDE
@LOCAL_OPTIONS
def load(
    manifest: str, limits: ManifestLimits, dry_run: bool, allow_same_media: bool, supersede: bool
) -> None:
    """Load MANIFEST into the job table without sending anything (workers send: `work`)."""
    m = limits.read(manifest, cached_digests())
    loaded = _load(m, dry_run, allow_same_media, supersede)
    if dry_run:
        n = len(loaded.plan.new) + len(loaded.plan.changed) + len(loaded.plan.superseded)
        say(f"{loaded.summary}; {n} job(s) would be loaded (--dry-run: nothing was)")
    else:
        say(f"{loaded.summary}; {loaded.plan.to_send} job(s) to send")


def _load(m: Manifest, dry_run: bool, allow_same_media: bool, supersede: bool) -> Loaded:
    from dubrunner import loadsession  # not sessions: no HTTP client to import

    loaded = loadsession.load(open_store(), m, dry_run, allow_same_media, supersede)
    if not isinstance(loaded, loadsession.Loaded):
        end(loaded)
    return loaded


@cli.command(cls=SectionedCommand)
@BATCH
@WORKER_OPTIONS
@COMMON_OPTIONS
def resume(batch: str | None, options: WorkerOptions, allow_insecure_http: bool) -> None:
    """Continue pending and halted jobs, and reclaim those of dead workers (looked up first)."""
    _submit_pending(batch, options, allow_insecure_http, require_batch=True)


@cli.command(cls=SectionedCommand)
@BATCH
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
@ON_DONE
@COMMON_OPTIONS
def work(
    batch: str | None,
    follow: bool,
    idle_poll: float,
    options: WorkerOptions,
    allow_insecure_http: bool,
    on_done: OnDone | None,
) -> None:
    """A worker for jobs loaded by `dubrunner load` (here or on another host)."""
    if follow:
        options = dataclasses.replace(options, follow=idle_poll)
    # A follower may start before its batch is loaded.
    _submit_pending(batch, options, allow_insecure_http, require_batch=not follow, on_done=on_done)


def _submit_pending(
    batch: str | None,
    options: WorkerOptions,
    allow_insecure_http: bool,
    require_batch: bool,
    on_done: OnDone | None = None,
) -> NoReturn:
    from dubrunner import sessions

    api = make_api(options, allow_insecure_http)
    store = open_store(must_exist=require_batch)  # a follower may wait for the first load
    if require_batch:
        check_batch(store, batch)
    ending = sessions.submit_pending(store, api, batch, options, TerminalUi())
    end(ending, hook_for(on_done, store, batch))
