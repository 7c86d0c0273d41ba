"""Shared fixtures: a real emulator on 127.0.0.1, a real SQLite file, the CLI as a subprocess."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dubrunner.emulator import Emulator, EmulatorConfig

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = Emulator(EmulatorConfig(tokens=(TOKEN,), seed=1234)).start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def env(emulator: Emulator, db_path: Path) -> dict[str, str]:
    """The environment of a user pointed at the emulator, with fast retry backoff."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DUBRUNNER_", "CHAMELAION_"))}
    base.update(
        CHAMELAION_BASE_URL=emulator.base_url,
        CHAMELAION_API_KEY=TOKEN,
        DUBRUNNER_DB=str(db_path),
        DUBRUNNER_RETRY_WAIT="0.02",
    )
    return base


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 120, cwd: Path | None = None
) -> Result:
    """Run `python -m dubrunner ARGS` as a real process."""
    proc = subprocess.run(
        [sys.executable, "-m", "dubrunner", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def write_manifest(
    path: Path, n: int, batch: str = "b", prefix: str = "ep", start: int = 0, **extra: Any
) -> Path:
    lines = [f"batch: {batch}", "jobs:"]
    for i in range(start, start + n):
        lines += [
            f"  - reference_id: {batch}-{prefix}{i:05d}",
            f"    video: https://cdn.example.com/{batch}/{prefix}{i}.mp4",
            f"    audio: https://cdn.example.com/{batch}/{prefix}{i}-ja.wav",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def db_rows(db_path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def states(db_path: Path) -> dict[str, int]:
    return dict(db_rows(db_path, "SELECT state, count(*) FROM jobs GROUP BY state"))  # type: ignore[arg-type]


def assert_exactly_once(emulator: Emulator, db_path: Path, n: int) -> None:
    """Every job submitted, one accepted request each, and the table holds that request_id."""
    ledger = emulator.accepted()
    assert emulator.duplicates() == {}
    rows = db_rows(db_path, "SELECT reference_id, state, request_id FROM jobs")
    assert len(rows) == n
    for ref, state, request_id in rows:
        assert state == "submitted", (ref, state)
        assert ledger.get(ref) == [request_id], ref
    assert len(ledger) == n
