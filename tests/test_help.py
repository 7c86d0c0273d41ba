"""Help: every option says what it does; submit's options and the commands come in sections."""

from __future__ import annotations

import click
from click.testing import CliRunner

from dubrunner.cli import cli
from tests.conftest import clean_env


def commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, click.Command]]:
    found = []
    for name, cmd in group.commands.items():
        found.append((" ".join((*path, name)), cmd))
        if isinstance(cmd, click.Group):
            found += commands(cmd, (*path, name))
    return found


def help_text(*args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"], env=clean_env(), terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_option_has_help_text() -> None:
    # Failed before: emulator --host/--latency-ms/--seed, fetch --concurrency, export --format
    # had none.
    missing = [
        f"{name} {param.opts[0]}"
        for name, cmd in [("dubrunner", cli), *commands(cli)]
        for param in cmd.params
        if isinstance(param, click.Option) and not param.help
    ]
    assert missing == []


def sections(text: str) -> dict[str, str]:
    """Each section's title (a line ending in ':' at the margin) and its text."""
    out: dict[str, str] = {}
    title = ""
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            title = line[:-1]
            out[title] = ""
        elif title:
            out[title] += line + "\n"
    return out


def test_submit_help_is_grouped() -> None:
    # Failed before: 23 options in one block.
    got = sections(help_text("submit"))
    assert list(got) == ["Input", "Pacing", "Retries", "Results", "Options"]
    for title, options in {
        "Input": ("--dry-run", "--preflight", "--max-jobs", "--allow-same-media"),
        "Pacing": ("--concurrency", "--rate ", "--burst", "--rate-shared"),
        "Retries": ("--max-attempts", "--retry-wait", "--lookup-grace"),
        "Results": ("--wait", "--fetch", "--interval", "--timeout"),
        "Options": ("--db", "--verbose", "--quiet", "--allow-insecure-http", "--help"),
    }.items():
        for option in options:
            assert option in got[title], (title, option)


def test_commands_are_listed_daily_first_then_checks_then_administration() -> None:
    # Failed before: one alphabetical list, the developer's emulator beside submit.
    got = sections(help_text())
    assert list(got)[-3:] == ["Daily commands", "Checks", "Administration"]

    def names(title: str) -> list[str]:
        return [line.split()[0] for line in got[title].splitlines() if line.strip()]

    assert names("Daily commands") == [
        "submit", "status", "resume", "poll", "fetch", "export", "report", "retry", "cancel",
        "supersede",
    ]  # fmt: skip
    assert names("Checks") == ["validate", "check", "doctor", "manifest"]
    assert names("Administration") == ["load", "work", "db", "emulator"]
