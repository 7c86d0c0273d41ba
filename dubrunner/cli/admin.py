"""The schema and the emulator: db upgrade, emulator."""

from __future__ import annotations

import time
from pathlib import Path

import click

from dubrunner.cli.common import (
    HOUR,
    LOCAL_OPTIONS,
    Seconds,
    UserError,
    cli,
    database_file,
    say,
)


@cli.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@LOCAL_OPTIONS
def db_upgrade() -> None:
    """Create or migrate the database to the newest schema (also done on first use)."""
    from dubrunner.store import Store, StoreError

    ctx = click.get_current_context()
    database_file(create=True)
    try:
        store = Store(ctx.meta.get("db"), migrate=False)
        before, after = store.upgrade()
        store.close()
    except StoreError as exc:
        raise UserError(str(exc)) from None
    say(f"database at revision {after}" + (f" (was {before})" if before != after else ""))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8787,
    show_default=True,
    help="0 picks a free port.",
)
@click.option(
    "--port-file", type=click.Path(dir_okay=False), help="Write the port here once listening."
)
@click.option(
    "--token",
    "tokens",
    multiple=True,
    default=["test-token"],
    show_default=True,
    help="An accepted credential (repeatable).",
)
@click.option("--rate", type=float, help="Requests per second before 429.")
@click.option(
    "--burst",
    type=click.IntRange(1),
    help="Requests the rate limit lets through at once (its token bucket's capacity); "
    "1 is a strict limiter [default: one second's worth].",
)
@click.option("--p500", type=click.FloatRange(0, 1), default=0.0, help="Chance of a 500.")
@click.option("--latency-ms", type=click.FloatRange(0), default=0.0, help="Added to every answer.")
@click.option(
    "--token-limit", type=click.IntRange(0), help="Accepted jobs before 'token limit reached'."
)
@click.option(
    "--token-limit-status",
    type=int,
    default=429,
    show_default=True,
    help="HTTP status of 'token limit reached'.",
)
@click.option(
    "--drop-after-accept",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Chance of dropping the connection after accepting a job.",
)
@click.option(
    "--p504-create",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Chance of a proxy's 504 while the request is created later anyway.",
)
@click.option(
    "--create-delay",
    type=click.FloatRange(0),
    default=3.0,
    show_default=True,
    help="Seconds after such a 504 until the request exists.",
)
@click.option(
    "--complete-after",
    type=Seconds(0, HOUR),
    default=1.0,
    show_default=True,
    help="Seconds until a job completes.",
)
@click.option(
    "--outage-after",
    type=Seconds(0, 7 * 24 * HOUR),
    help="Start an outage this many seconds after starting: every API request fails.",
)
@click.option(
    "--outage-for",
    type=Seconds(0, 7 * 24 * HOUR),
    default=60.0,
    show_default=True,
    help="How long that outage lasts.",
)
@click.option(
    "--outage-status",
    type=click.Choice(["500", "503"]),
    default="500",
    show_default=True,
    help="500: the API's 'internal error'; 503: a proxy's HTML page.",
)
@click.option(
    "--upload-read-rate",
    type=click.FloatRange(1),
    help="Read an upload (a generate-with-media body) at most this many bytes per second "
    "[default: at once].",
)
@click.option(
    "--p-upload-reset",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Chance of resetting the connection halfway through an upload (nothing is created).",
)
@click.option(
    "--garbage", is_flag=True, help="Answer every generate with a 200 that is not the API's JSON."
)
@click.option(
    "--upper-case-statuses",
    is_flag=True,
    help="Say PENDING/PROCESSING/COMPLETED/FAILED instead of the documented lower case.",
)
@click.option(
    "--output-ttl",
    type=Seconds(0.1, 7 * 24 * HOUR),
    help="Serve signed output URLs valid this long from the GET that showed them "
    "[default: plain URLs that never expire].",
)
@click.option("--seed", type=int, help="Seed of the random faults, for a repeatable run.")
def emulator(
    host: str,
    port: int,
    port_file: str | None,
    tokens: tuple[str, ...],
    rate: float | None,
    burst: int | None,
    p500: float,
    latency_ms: float,
    token_limit: int | None,
    token_limit_status: int,
    drop_after_accept: float,
    p504_create: float,
    create_delay: float,
    complete_after: float,
    outage_after: float | None,
    outage_for: float,
    outage_status: str,
    upload_read_rate: float | None,
    p_upload_reset: float,
    garbage: bool,
    upper_case_statuses: bool,
    output_ttl: float | None,
    seed: int | None,
) -> None:
    """Run the local API emulator (for the demo and tests) until interrupted."""
    from dubrunner.emulator import Emulator, EmulatorConfig

    config = EmulatorConfig(
        tokens=tokens,
        rate=rate,
        burst=burst,
        p500=p500,
        latency_ms=latency_ms,
        token_limit=token_limit,
        token_limit_status=token_limit_status,
        drop_after_accept=drop_after_accept,
        p504_create=p504_create,
        create_delay=create_delay,
        complete_after=complete_after,
        outage_until=0.0,
        outage_status=int(outage_status),
        upload_read_rate=upload_read_rate,
        p_upload_reset=p_upload_reset,
        garbage=garbage,
        upper_case=upper_case_statuses,
        output_ttl=output_ttl,
        seed=seed,
    )
    try:
        emu = Emulator(config, host=host, port=port)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    if outage_after is not None:
        start = time.time() + outage_after
        emu.update(outage_from=start, outage_until=start + outage_for)
    click.echo(f"emulator listening on {emu.base_url}", err=True)
    if port_file:
        Path(port_file).write_text(str(emu.port))
    try:
        emu.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
