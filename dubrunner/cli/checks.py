"""Before and around a run: check (preflight), doctor."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dubrunner.cli.common import (
    COMMON_OPTIONS,
    MANIFEST_LIMITS,
    PREFLIGHT_OPTIONS,
    ManifestLimits,
    TerminalUi,
    UserError,
    cached_digests,
    cli,
    end,
    open_store,
)
from dubrunner.constants import EXIT_INCOMPLETE, database_exists
from dubrunner.redact import scrub

if TYPE_CHECKING:
    from dubrunner.sessions import MediaCheck, MediaJob


@cli.command()
@click.argument("target")
@MANIFEST_LIMITS
@PREFLIGHT_OPTIONS
@COMMON_OPTIONS
def check(target: str, limits: ManifestLimits, media: MediaCheck) -> None:
    """Check the media URLs of a manifest file or a batch before paying for anything.

    Local files are hashed again, whatever the digest cache holds (and the cache is refreshed):
    a batch's must still be the files its jobs were loaded with."""
    from dubrunner import sessions

    jobs: Sequence[MediaJob]
    media = dataclasses.replace(media, max_upload_bytes=limits.max_upload_bytes)
    rehash = cached_digests(fresh=True)
    loaded = None
    if Path(target).is_file():
        manifest = limits.read(target, rehash)
        bad_files = sessions.check_local_files(manifest, media)
        if bad_files is not None:
            end(bad_files)
        jobs = manifest.jobs
    else:
        there = database_exists(click.get_current_context().meta.get("db"))
        store = open_store(must_exist=True) if there else None
        if store is None or target not in store.batches():
            raise UserError(f"{target!r} is neither a manifest file nor a batch in the database")
        jobs = store.unsent(target)
        loaded = sessions.Rehash(store.loaded_files(target), rehash)
    end(sessions.check_media(jobs, media, TerminalUi(), loaded))


@cli.command()
@click.option("--allow-insecure-http", is_flag=True, help="As for submit.")
@COMMON_OPTIONS
def doctor(allow_insecure_http: bool) -> None:
    """Check the set-up end to end: credentials, the API, the database, the clock."""
    from rich.table import Table

    from dubrunner.doctor import diagnose
    from dubrunner.output import plain, table_console
    from dubrunner.sessions import Ending

    findings = diagnose(click.get_current_context().meta.get("db"), allow_insecure_http)
    table = Table(title="dubrunner doctor", title_justify="left")
    for name in ("check", "", "finding"):
        table.add_column(name, overflow="fold")
    for f in findings:
        table.add_row(f.check, "ok" if f.ok else "PROBLEM", plain(scrub(f.detail)))
    table_console().print(table)
    bad = [f for f in findings if not f.ok]
    if bad:
        problems = f"{len(bad)} problem(s): " + "; ".join(f.check for f in bad)
        end(Ending(problems, EXIT_INCOMPLETE, is_error=True))
