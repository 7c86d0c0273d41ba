"""What helps people type commands: --help in sections, and shell completion of batch names and
reference_ids from the database."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click
from click.shell_completion import CompletionItem

from dubrunner.constants import database_exists

if TYPE_CHECKING:
    from dubrunner.store import Store

# -- help in sections ----------

# `dubrunner --help` lists the commands in these sections, in this order.
COMMAND_SECTIONS = {
    "Daily commands": (
        "submit",
        "status",
        "resume",
        "poll",
        "fetch",
        "export",
        "report",
        "retry",
        "cancel",
        "supersede",
    ),
    "Checks": ("validate", "check", "doctor", "manifest"),
    "Administration": ("load", "work", "db", "emulator"),
}  # any other command: under "Other commands"
# A command's options in --help, by section (click lists them in one block otherwise); an option
# not named here goes under "Options", last.
OPTION_SECTIONS = {
    "Input": (
        "dry_run", "preflight", "allow_same_media", "supersede", "media_concurrency", "per_host",
        "max_jobs", "max_manifest_bytes",
    ),
    "Pacing": ("concurrency", "rate", "burst", "rate_shared", "request_timeout"),
    "Retries": ("max_attempts", "retry_wait", "lookup_grace", "outage_timeout"),
    "Results": ("wait", "fetch_dir", "interval", "timeout", "on_done", "on_done_timeout"),
}  # fmt: skip


class SectionedCommand(click.Command):
    """A command whose --help shows its options in OPTION_SECTIONS' sections (click's documented
    extension point: format_options)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None or isinstance(param, click.Argument):
                continue
            section = next(
                (s for s, names in OPTION_SECTIONS.items() if param.name in names), "Options"
            )
            records.setdefault(section, []).append(record)
        for section in (*OPTION_SECTIONS, "Options"):
            if section in records:
                with formatter.section(section):
                    formatter.write_dl(records[section])


class SectionedGroup(click.Group):
    """The command group whose --help lists its commands in COMMAND_SECTIONS' sections."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        listed = self.list_commands(ctx)
        width = formatter.width - 6 - max(map(len, listed))
        placed = {name for names in COMMAND_SECTIONS.values() for name in names}
        others = tuple(name for name in listed if name not in placed)
        for section, names in (*COMMAND_SECTIONS.items(), ("Other commands", others)):
            rows = []
            for name in names:
                cmd = self.get_command(ctx, name) if name in listed else None
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(width)))
            if rows:
                with formatter.section(section):
                    formatter.write_dl(rows)


# -- shell completion ----------

COMPLETIONS_SHOWN = 200  # reference_ids offered at most for one TAB


def _database_of(ctx: click.Context) -> str | None:
    """--db as given so far on the command line (after the command or before it), or its
    environment variable."""
    while ctx is not None:
        if ctx.params.get("db"):
            return str(ctx.params["db"])
        ctx = ctx.parent  # type: ignore[assignment]
    return None


def _ask(ctx: click.Context, question: Callable[[Store], list[str]]) -> list[str]:
    """The database's answer, or nothing: a TAB never creates, migrates or breaks anything."""
    db = _database_of(ctx)
    if not database_exists(db):
        return []
    try:
        from dubrunner.store import Store

        store = Store(db, migrate=False, create=False)
        try:
            return question(store)
        finally:
            store.close()
    except Exception:
        return []


def complete_batch(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    names = _ask(ctx, lambda store: store.batches())
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def complete_reference_id(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    refs = _ask(ctx, lambda store: store.reference_ids(incomplete, COMPLETIONS_SHOWN))
    return [CompletionItem(r) for r in refs if r.startswith(incomplete)]
