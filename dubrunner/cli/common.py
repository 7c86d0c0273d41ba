"""What every command shares: the group, the option groups, what commands open, and (from
cli/ending) the one way a session's ending is shown and becomes the exit code. The only CLI
module the others import.

The command modules import only click and light modules when they are loaded; what a command
needs (SQLAlchemy, httpx, rich, YAML) is imported when it runs, so that `dubrunner --help` and
each TAB of shell completion start at once (tests/test_startup.py watches this)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from dubrunner import __version__
from dubrunner.cli.ending import TerminalUi as TerminalUi
from dubrunner.cli.ending import UserError as UserError
from dubrunner.cli.ending import end as end
from dubrunner.cli.ending import is_quiet as is_quiet
from dubrunner.cli.ending import output_file as output_file
from dubrunner.cli.ending import say as say
from dubrunner.cli.ending import show_ending as show_ending
from dubrunner.cli.ending import stop_on_signals as stop_on_signals
from dubrunner.cli.guide import SectionedCommand as SectionedCommand  # for the commands
from dubrunner.cli.guide import SectionedGroup, complete_batch
from dubrunner.cli.guide import complete_reference_id as complete_reference_id
from dubrunner.cli.ondone import ON_DONE as ON_DONE
from dubrunner.cli.ondone import hook_for as hook_for
from dubrunner.cli.params import HOUR as HOUR  # for the commands
from dubrunner.cli.params import OptionGroup, RateType
from dubrunner.cli.params import Seconds as Seconds
from dubrunner.constants import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_JOBS,
    DEFAULT_MAX_UPLOAD_BYTES,
    EXIT_USAGE,
    sqlite_path,
)
from dubrunner.logs import setup_logging
from dubrunner.redact import shown

if TYPE_CHECKING:
    from dubrunner.api import ApiClient
    from dubrunner.dbfile import SqliteFile
    from dubrunner.localmedia import Digests
    from dubrunner.manifest import Manifest
    from dubrunner.sessions import MediaCheck, Polling
    from dubrunner.store import Store
    from dubrunner.worker import WorkerOptions

FORMATS = ("table", "json", "jsonl", "csv")  # the same names in every command that has --format
MACHINE_FORMATS = ("json", "jsonl", "csv")

F = TypeVar("F", bound=Callable[..., Any])


@click.group(
    cls=SectionedGroup,
    context_settings={"auto_envvar_prefix": "DUBRUNNER", "help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="dubrunner", help="Show the version and exit.")
@click.option(
    "--db",
    envvar="DUBRUNNER_DB",
    metavar="PATH|URL",
    help="SQLite file or SQLAlchemy URL [env DUBRUNNER_DB; default ./dubrunner.db]",
)
@click.option("-v", "--verbose", count=True, help="One line per HTTP attempt.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
def cli(db: str | None, verbose: int, quiet: bool) -> None:
    """Submit batches of lip-sync dubbing jobs to the Chamelaion API, each exactly once.

    Credentials come from CHAMELAION_API_KEY and/or CHAMELAION_BEARER_TOKEN, the API's address
    from CHAMELAION_BASE_URL. Every option can also be set as DUBRUNNER_<COMMAND>_<OPTION>.
    --db, -v and -q go before the command or after it, as you like.
    """
    # The group's options, as git and kubectl take them; a command's own copy wins (_begin).
    click.get_current_context().meta.update(db=db, verbose=verbose, quiet=quiet)


# -- what commands open ----------


def open_store(*, must_exist: bool = False) -> Store:
    """The job table. `must_exist`: a command that only acts on jobs already loaded, which must
    not create a database where none was (a typo'd --db, the wrong folder), nor make one of an
    empty file."""
    from dubrunner.store import Store, StoreError

    ctx = click.get_current_context()
    opened: Store | None = ctx.meta.get("dubrunner.store")
    if opened is not None:  # opened once, closed with the command
        return opened
    database_file(create=not must_exist)
    try:
        store = Store(ctx.meta.get("db"), create=not must_exist)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    ctx.call_on_close(store.close)
    ctx.meta["dubrunner.store"] = store
    return store


def database_file(*, create: bool) -> SqliteFile | None:
    """The --db's SQLite file as the standard library sees it (None: a server's database, which
    Store looks at). Another program's file, and unless `create` no file or an empty one, is
    refused here in one line (in the user's words), untouched and before SQLAlchemy is imported."""
    from dubrunner.dbfile import SqliteFile

    db = click.get_current_context().meta.get("db")
    path = sqlite_path(db)
    if path is None:
        return None
    file = SqliteFile.peek(Path(path))
    problem = file.refusal(shown(db or "./dubrunner.db"), create=create)
    if problem is not None:
        raise UserError(problem)
    return file


def cached_digests(fresh: bool = False) -> Digests:
    """Local files' SHA-256s, cached in the database (opened at the first local file only);
    `fresh`: every file hashed again, whatever the cache holds, and the cache refreshed."""
    from dubrunner.localmedia import Digests

    return Digests(
        None if fresh else lambda *key: open_store().cached_digest(*key),
        lambda *row: open_store().save_digest(*row),
    )


def check_batch(store: Store, batch: str | None) -> None:
    if batch is not None and batch not in store.batches():
        raise UserError(f"no batch {batch!r} in the database")


def check_refs(store: Store, refs: Sequence[str], batch: str | None) -> None:
    """A --ref no job (of --batch) has is a typo to say, not "0 jobs" (nothing is changed)."""
    unknown = store.unknown_references(refs, batch)
    if unknown:
        names = ", ".join(repr(ref) for ref in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        where = f" in batch {batch!r}" if batch is not None else ""
        raise UserError(f"no job with reference_id {names}{more}{where}; nothing was changed")


def make_api(options: WorkerOptions, allow_insecure_http: bool) -> ApiClient:
    from dubrunner.api import ApiClient, ConfigError, Credentials

    try:
        api = ApiClient(
            Credentials.from_env(),
            read_timeout=options.request_timeout,
            allow_insecure_http=allow_insecure_http,
        )
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    click.get_current_context().call_on_close(api.close)
    return api


@dataclass(frozen=True)
class ManifestLimits:
    max_jobs: int
    max_manifest_bytes: int
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    batch: str | None = None

    def read(self, path: str, digests: Digests | None = None) -> Manifest:
        """The manifest, or every problem with it and exit 2. Local files are hashed through
        `digests` (default: not cached)."""
        from dubrunner.manifest import ManifestError
        from dubrunner.manifest import load as load_manifest
        from dubrunner.session_ui import Ending

        try:
            return load_manifest(
                path,
                self.max_manifest_bytes,
                self.max_jobs,
                max_upload_bytes=self.max_upload_bytes,
                digests=digests,
                batch=self.batch,
            )
        except ManifestError as exc:
            n = len(exc.problems)
            end(
                Ending(
                    f"{n} problem{'s' if n != 1 else ''} in {exc.path}; nothing was loaded",
                    EXIT_USAGE,
                    is_error=True,
                    details=tuple(exc.lines()),
                )
            )


# -- option groups ----------

BATCH = click.option(
    "--batch", help="Only this batch [default: every batch].", shell_complete=complete_batch
)


def _begin(db: str | None = None, verbose: int = 0, quiet: bool = False) -> None:
    ctx = click.get_current_context()
    db = db or ctx.meta.get("db")
    verbose = verbose or int(ctx.meta.get("verbose") or 0)
    quiet = quiet or bool(ctx.meta.get("quiet"))
    setup_logging(verbose, quiet)
    ctx.meta.update(db=db, verbose=verbose, quiet=quiet)


def _begin_local(db: str | None, quiet: bool) -> None:
    _begin(db, 0, quiet)


def _begin_offline(quiet: bool) -> None:
    _begin(None, 0, quiet)


_DB = click.option(
    "--db",
    envvar="DUBRUNNER_DB",
    metavar="PATH|URL",
    help="SQLite file or SQLAlchemy URL [env DUBRUNNER_DB; default ./dubrunner.db]",
)
_VERBOSE = click.option("-v", "--verbose", count=True, help="One line per HTTP attempt.")
_QUIET = click.option("-q", "--quiet", is_flag=True, help="Only errors.")
# Each command is offered what acts on it: the database, and -v where HTTP requests are made.
COMMON_OPTIONS = OptionGroup(_DB, _VERBOSE, _QUIET, gather=_begin)
LOCAL_OPTIONS = OptionGroup(_DB, _QUIET, gather=_begin_local)  # no HTTP request
OFFLINE_OPTIONS = OptionGroup(_QUIET, gather=_begin_offline)  # neither the database nor HTTP


def _worker_options(
    concurrency: int,
    rate: float | str | None,
    burst: int,
    rate_shared: bool,
    max_attempts: int,
    retry_wait: float,
    request_timeout: float,
    lookup_grace: float,
    outage_timeout: float,
    upload_concurrency: int,
) -> WorkerOptions:
    from dubrunner.worker import WorkerOptions

    auto = rate == "auto"
    if auto and rate_shared:
        raise UserError("--rate auto and --rate-shared do not go together: give a number")
    return WorkerOptions(
        concurrency=concurrency,
        max_attempts=max_attempts,
        backoff_base=retry_wait,
        request_timeout=request_timeout,
        lookup_grace=lookup_grace,
        outage_timeout=outage_timeout or None,
        rate=None if auto else rate,  # type: ignore[arg-type]
        burst=burst,
        rate_shared=rate_shared,
        rate_auto=auto,
        upload_concurrency=upload_concurrency,
    )


# The command receives `options: WorkerOptions` and `allow_insecure_http` (for make_api).
WORKER_OPTIONS = OptionGroup(
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
        type=Seconds(0, HOUR),
        default=0.5,
        show_default=True,
        envvar="DUBRUNNER_RETRY_WAIT",
        help="First wait before a retry, in seconds; it doubles each time (with jitter).",
    ),
    click.option(
        "--request-timeout",
        type=Seconds(0.1, HOUR),
        default=60.0,
        show_default=True,
        envvar="DUBRUNNER_REQUEST_TIMEOUT",
        help="Seconds to wait for an answer; claims are leased for twice that.",
    ),
    click.option(
        "--lookup-grace",
        type=Seconds(0, HOUR),
        default=30.0,
        show_default=True,
        envvar="DUBRUNNER_LOOKUP_GRACE",
        help="After an answer that leaves a job's fate unknown, seconds the server may "
        "still take to create it: a look-up finding nothing sooner is repeated then, "
        "before any resend.",
    ),
    click.option(
        "--outage-timeout",
        type=Seconds(0, 7 * 24 * HOUR),
        default=600.0,
        show_default=True,
        envvar="DUBRUNNER_OUTAGE_TIMEOUT",
        help="When the API fails as a whole, how long to keep probing it before halting, "
        "jobs left as they were: pending ones pending (0: for ever).",
    ),
    click.option(
        "--upload-concurrency",
        type=click.IntRange(1, 64),
        default=2,
        show_default=True,
        envvar="DUBRUNNER_UPLOAD_CONCURRENCY",
        help="Uploads of local files at once (within --concurrency), so that a few large "
        "files do not starve the link.",
    ),
    click.option(
        "--allow-insecure-http",
        is_flag=True,
        envvar="DUBRUNNER_ALLOW_INSECURE_HTTP",
        help="Allow credentials over plain http to a host other than loopback.",
    ),
    gather=_worker_options,
    into="options",
)


def _polling(
    interval: float, timeout: float | None, gone_after: int, output_grace: float
) -> Polling:
    from dubrunner.sessions import Polling

    return Polling(interval, timeout, gone_after, output_grace)


POLL_OPTIONS = OptionGroup(
    click.option(
        "--interval",
        type=Seconds(0.01, HOUR),
        default=5.0,
        show_default=True,
        envvar="DUBRUNNER_POLL_INTERVAL",
        help="Seconds between rounds at first; grows by half each round, up to a minute.",
    ),
    click.option(
        "--timeout",
        type=Seconds(0, 30 * 24 * HOUR),
        default=None,
        envvar="DUBRUNNER_POLL_TIMEOUT",
        help="With --wait: give up after this many seconds [default: never].",
    ),
    click.option(
        "--gone-after",
        type=click.IntRange(1, 1000),
        default=3,
        show_default=True,
        help="Rounds the API may answer 'not found' for a job's request before the job ends "
        "failed ('the API no longer knows this request').",
    ),
    click.option(
        "--output-grace",
        type=Seconds(0, 7 * 24 * HOUR),
        default=300.0,
        show_default=True,
        help="Seconds a request said to be finished may go without an output_url before its "
        "job ends failed (polled again meanwhile).",
    ),
    gather=_polling,
    into="polling",
)


def _media_check(media_concurrency: int, per_host: int) -> MediaCheck:
    from dubrunner.sessions import MediaCheck

    return MediaCheck(media_concurrency, per_host)


PREFLIGHT_OPTIONS = OptionGroup(
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
    gather=_media_check,
    into="media",
)

MANIFEST_LIMITS = OptionGroup(
    click.option(
        "--max-jobs",
        type=click.IntRange(1),
        default=DEFAULT_MAX_JOBS,
        envvar="DUBRUNNER_MAX_JOBS",
        show_default=True,
        help="Refuse manifests with more jobs.",
    ),
    click.option(
        "--max-manifest-bytes",
        type=click.IntRange(1),
        default=DEFAULT_MAX_BYTES,
        envvar="DUBRUNNER_MAX_MANIFEST_BYTES",
        show_default=True,
        help="Refuse larger files.",
    ),
    click.option(
        "--max-upload-bytes",
        type=click.IntRange(1),
        default=DEFAULT_MAX_UPLOAD_BYTES,
        envvar="DUBRUNNER_MAX_UPLOAD_BYTES",
        show_default=True,
        help="Refuse local media files larger than this (each is uploaded).",
    ),
    click.option(
        "--batch",
        help="The manifest's batch [default: YAML's batch:, else the file's name]; a YAML "
        "batch: must agree.",
    ),
    gather=ManifestLimits,
    into="limits",
)
