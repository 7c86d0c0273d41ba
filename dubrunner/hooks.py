"""`--on-done CMD`: a command of the user's run once a run has ended, so that a coordinator can
post to chat, send mail or start the next step.

CMD is run by `/bin/sh -c`, once, after the run's last line: its standard input is the run's
summary as one JSON object (`payload`), its environment the caller's without the API's
credentials (`environment`) plus DUBRUNNER_BATCH and DUBRUNNER_EXIT. Its output goes to
dubrunner's stderr: stdout stays data alone. It is bounded: past its timeout its whole process
group is killed. Whatever it does (exits non-zero, hangs, cannot be started) is said in one line
and changes nothing else: not the run's exit code, not the database."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dubrunner.constants import CREDENTIAL_VARIABLES
from dubrunner.redact import scrub, shown

if TYPE_CHECKING:
    from dubrunner.session_ui import Ending
    from dubrunner.store import Store

SHELL = "/bin/sh"
KILL_WAIT = 5.0  # after SIGKILL, how long to wait for the shell to be reaped
MIN_SECRET = 4  # a credential shorter than this is looked for by its name only (as in redact)
# Variables that may hold a password in a URL (a PostgreSQL database's): left out when they do.
URL_VARIABLES = ("DUBRUNNER_DB",)
# What the shell's exit code means when it could not run the command itself.
_SHELL_CODES = {126: "not executable", 127: "command not found"}


@dataclass(frozen=True)
class OnDone:
    """The hook: a shell command line and the seconds it may take."""

    command: str
    timeout: float


def after_run(
    hook: OnDone, store: Store, command: str, batch: str | None, ending: Ending
) -> list[str]:
    """Run the hook for a run of `command` over `batch` (None: every batch) that ended in
    `ending`; the lines to show, one per thing that went wrong (none when the hook exited 0)."""
    from dubrunner.db import StoreError
    from dubrunner.queries import summary_item

    trouble = None
    try:
        counts = store.summary(batch)
        summary: list[dict[str, Any]] | None = [summary_item(*row) for row in counts]
        batches = [batch] if batch is not None else sorted({b for b, _s, _n in counts})
    except StoreError as exc:
        summary, batches = None, [] if batch is None else [batch]
        trouble = f"on-done hook: the summary could not be read ({exc}); it gets null"
    data = payload(command, batch, ending.code, ending.sentence, summary)
    problem = run(hook, data, environment(os.environ, batches, ending.code))
    return [shown(line) for line in (trouble, problem) if line]


def payload(
    command: str,
    batch: str | None,
    code: int,
    sentence: str,
    summary: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """What the hook reads on stdin: which command ran for which batch (None: every batch), its
    exit code and last sentence, and the jobs per batch and state, the rows of `status --summary
    --format json` (None when the database could not be read)."""
    return {
        "command": command,
        "batch": batch,
        "exit": code,
        "sentence": scrub(sentence),
        "summary": summary,
    }


def environment(environ: Mapping[str, str], batches: list[str], code: int) -> dict[str, str]:
    """The hook's environment: `environ` without the API's credentials (CREDENTIAL_VARIABLES,
    and any variable whose value holds one of them or another registered secret), without a
    database URL that carries a password; with DUBRUNNER_BATCH (the batches, comma-joined: a
    batch name holds no comma) and DUBRUNNER_EXIT (the run's exit code)."""
    credentials = [environ.get(name, "").strip() for name in CREDENTIAL_VARIABLES]
    secrets = [value for value in credentials if len(value) >= MIN_SECRET]
    env: dict[str, str] = {}
    for name, value in environ.items():
        if name in CREDENTIAL_VARIABLES or scrub(value) != value:
            continue
        if any(secret in value for secret in secrets):
            continue
        if name in URL_VARIABLES and _has_password(value):
            continue
        env[name] = value
    env["DUBRUNNER_BATCH"] = ",".join(batches)
    env["DUBRUNNER_EXIT"] = str(code)
    return env


def _has_password(value: str) -> bool:
    try:
        return urlsplit(value).password is not None
    except ValueError:
        return True  # unreadable: kept out rather than guessed at


def run(hook: OnDone, data: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """Run the hook with `data` as JSON on its stdin; None when it exited 0, else the one line
    that says what went wrong. A KeyboardInterrupt meanwhile kills it and is raised again."""
    sys.stderr.flush()  # what was said before comes before what the hook says
    out = _stderr_fd()
    text = (json.dumps(dict(data)) + "\n").encode("utf-8")
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = subprocess.Popen(
            [SHELL, "-c", hook.command],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out,
            env=dict(env),
            start_new_session=True,  # a process group of its own, killed as a whole
            close_fds=True,
        )
        # communicate writes stdin as the hook reads it, and takes a hook that stops reading (or
        # never starts) as its business: neither blocks us beyond the timeout.
        proc.communicate(text, timeout=hook.timeout)
    except OSError as exc:  # no shell to start it with, out of processes
        if proc is not None:
            _kill(proc)
        return f"on-done hook could not be run: {exc.strerror or exc}"
    except subprocess.TimeoutExpired:
        assert proc is not None
        _kill(proc)
        return f"on-done hook took longer than {hook.timeout:g} s and was killed"
    except BaseException:  # Ctrl-C, SIGTERM: the hook goes with us, at once
        if proc is not None:
            _kill(proc)
        raise
    code = proc.returncode
    if code == 0:
        return None
    if code < 0:
        return f"on-done hook was killed by {_signal_name(-code)}"
    meaning = _SHELL_CODES.get(code)
    return f"on-done hook exited {code}" + (f" ({meaning})" if meaning else "")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the hook's whole process group (the shell and whatever it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_WAIT)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _stderr_fd() -> int:
    """Where the hook's output goes: dubrunner's stderr (the process's fd 2 when sys.stderr is
    not a file, as under a test runner that captures it)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return 2
