"""The shell every run shares (the worker's, the poller's, the fetcher's): who it is, how it is
stopped, its counters, and what a database failure or a bug does to it."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from dubrunner.db import StoreError
from dubrunner.redact import scrub

log = logging.getLogger("dubrunner")


def worker_id() -> str:
    """An owner name for this process: host, pid (to tell a dead local owner) and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """True only when the owner is provably a dead process on this host."""
    try:
        host, pid_text, _ = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class Report:
    """What every run says at its end; each kind of run adds its counters."""

    halt_message: str | None = None
    halt_advice: str | None = None  # what to do about the halt, when its cause knows
    fatal: str | None = None
    interrupted: bool = False


class Run:
    """A stop event, counters under a lock, and the way a run ends on a halt or a failure."""

    report: Report

    def __init__(self) -> None:
        self.owner = worker_id()
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def request_stop(self) -> None:
        """Ctrl-C / SIGTERM: start nothing more, let what is in flight finish.

        Runs in a signal handler: it takes no lock (the interrupted code might hold it)."""
        self.report.interrupted = True
        self.stop.set()

    def add(self, counter: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.report, counter, getattr(self.report, counter) + n)

    def halt(self, message: str, advice: str | None = None) -> None:
        """Stop the whole run, saying why (the first reason wins)."""
        with self._lock:
            if self.report.halt_message is None:
                self.report.halt_message = message
                self.report.halt_advice = advice
        self.stop.set()

    def fatal(self, message: str) -> None:
        with self._lock:
            if self.report.fatal is None:
                self.report.fatal = message
        self.stop.set()

    def guarded(self, body: Callable[[], None]) -> None:
        """Run `body`; a database failure or a bug stops the run with one sentence."""
        try:
            body()
        except StoreError as exc:
            self.fatal(f"the database failed: {exc}")
        except Exception as exc:  # a bug: stop safely, say so
            log.exception("unexpected error")
            message = scrub(str(exc)).partition("\n")[0][:300]
            self.fatal(f"internal error: {type(exc).__name__}: {message}")

    def ticking(self, target: Callable[[], None], tick: Callable[[], None] | None) -> None:
        """Run `target` (guarded) on a thread and call `tick` from this one meanwhile: the main
        thread stays free for signal handlers and the progress display."""
        thread = threading.Thread(target=self.guarded, args=(target,), daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.1)
            if tick is not None:
                tick()
