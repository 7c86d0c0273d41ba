"""A made-up batch history in a real SQLite file, for the report's fast tests and its benchmark:
jobs loaded by the store, then their states, times, downloads and attempts written as SQL so that
every number the report must find is known in advance."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from dubrunner.records import JobSpec
from dubrunner.store import Store

T0 = datetime(2026, 1, 2, 3, 0, 0)


@dataclass
class Expected:
    states: dict[str, int] = field(default_factory=dict)
    rate_limited: int = 0
    server_errors: int = 0
    halts: int = 0
    durations: list[float] = field(default_factory=list)
    downloaded: int = 0
    bytes: int = 0
    download_failed: int = 0
    failures: dict[str, list[str]] = field(default_factory=dict)  # normalised error -> refs


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds") + "Z"


def fill(path: Path, n: int, batch: str = "hist") -> Expected:
    """n jobs, 10 accepted a second: every 10th failed at the API ("no face found in frame N"),
    every 25th failed before sending (a media URL answering 404), the last 5 still pending, the
    rest completed after (i % 100) + 1 s at the API; jobs 100-119 met a 429 each, 300-310 a 500,
    the last completed job a halt; completed jobs downloaded (1000 + i bytes) except every 7th."""
    specs = [
        JobSpec(
            f"{batch}-{i:06d}",
            f"https://cdn.example.com/{batch}/v{i}.mp4",
            f"https://cdn.example.com/{batch}/a{i}.wav",
            False,
            i + 1,
        )
        for i in range(n)
    ]
    store = Store(f"sqlite:///{path}")
    store.load(batch, specs, "made-up")
    store.close()
    conn = sqlite3.connect(path)
    ids = dict(conn.execute("SELECT reference_id, id FROM jobs").fetchall())
    want = Expected()
    jobs, attempts = [], []
    last_completed = max(i for i in range(n - 5) if i % 10 != 9 and i % 25 != 0)
    for i, spec in enumerate(specs):
        ref, job_id = spec.reference_id, ids[spec.reference_id]
        sent = T0 + timedelta(seconds=i / 10)
        row: dict[str, object] = {"id": job_id, "state": "pending", "submitted_at": None}
        if i >= n - 5:
            pass
        elif i % 25 == 0:
            row.update(state="failed", last_error=f"video https://cdn.example.com/v{i} gave 404")
            want.failures.setdefault("video <url> gave <n>", []).append(ref)
        else:
            took = (i % 100) + 1.0
            started = sent + timedelta(seconds=2)
            finished = started + timedelta(seconds=took)
            want.durations.append(took)
            row.update(
                submitted_at=_ts(sent),
                request_id=f"req-{i}",
                remote_started_at=_iso(started),
                remote_finished_at=_iso(finished),
            )
            attempts.append((job_id, _ts(sent), "generate", "accepted", 200))
            if i % 10 == 9:
                row.update(state="failed", remote_status="FAILED")
                row["remote_error"] = f"no face found in frame {i * 7}"
                want.failures.setdefault("no face found in frame <n>", []).append(ref)
                attempts.append((job_id, _ts(finished), "poll", "failed", 200))
            else:
                row.update(state="completed", remote_status="COMPLETED")
                attempts.append((job_id, _ts(finished), "poll", "completed", 200))
                if i % 7 == 0:
                    row.update(download_state="failed", download_error="HTTP 403")
                    want.download_failed += 1
                else:
                    row.update(download_state="downloaded", size_bytes=1000 + i)
                    want.downloaded += 1
                    want.bytes += 1000 + i
            if 100 <= i < 120:
                attempts.append((job_id, _ts(sent), "generate", "retry", 429))
                want.rate_limited += 1
            if 300 <= i <= 310:
                attempts.append((job_id, _ts(sent), "generate", "retry", 500))
                want.server_errors += 1
            if i == last_completed:
                attempts.append((job_id, _ts(sent), "poll", "halt_batch", 401))
                want.halts += 1
        want.states[str(row["state"])] = want.states.get(str(row["state"]), 0) + 1
        jobs.append(row)
    for row in jobs:
        sets = ", ".join(f"{k} = :{k}" for k in row if k != "id")
        conn.execute(f"UPDATE jobs SET {sets} WHERE id = :id", row)
    conn.executemany(
        "INSERT INTO attempts (job_id, at, kind, outcome, http_status) VALUES (?, ?, ?, ?, ?)",
        attempts,
    )
    conn.commit()
    conn.close()
    for refs in want.failures.values():
        refs.sort()
    return want
