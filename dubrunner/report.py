"""`dubrunner report`: the numbers of a batch, from the database alone (read-only): where every job
is, submissions and completions over time, where the API throttled or failed, failures grouped by
their error, how long the API took, downloads. One Report feeds the table, JSON and HTML alike, so
they cannot disagree. No HTTP, no click."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from dubrunner import report_queries as q
from dubrunner.db import Database
from dubrunner.errors import Action
from dubrunner.redact import scrub

SCHEMA_VERSION = 1
MAX_POINTS = 60  # timeline buckets at most
MAX_BINS = 20  # histogram bins at most
EXAMPLES = 3  # reference_ids shown per error
PROCESSING_MEASURES = "remote started_at to finished_at, as the API reported them"
# Timeline bucket widths (seconds); past a day, whole days.
_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)


@dataclass(frozen=True, slots=True)
class Point:
    """One timeline bucket: totals at its end, and the trouble met within it."""

    start: str
    submitted: int  # cumulative
    completed: int  # cumulative
    rate_limited: int  # 429 answers in this bucket
    server_errors: int  # 5xx answers, or no answer at all
    halts: int  # answers that halted the batch (credentials, token limit)


@dataclass(frozen=True, slots=True)
class Period:
    """Consecutive timeline buckets in which the API throttled or failed."""

    start: str
    end: str
    rate_limited: int
    server_errors: int
    halts: int


@dataclass(frozen=True, slots=True)
class Throttling:
    rate_limited: int
    server_errors: int
    halts: int
    periods: list[Period]


@dataclass(frozen=True, slots=True)
class Throughput:
    first_submitted: str | None
    last_submitted: str | None
    last_completed: str | None
    submitted_per_min: float | None  # accepted jobs / minutes from the first to the last
    completed_per_min: float | None  # completed jobs / minutes from the first accepted to the last


@dataclass(frozen=True, slots=True)
class Failure:
    error: str  # numbers, ids and URLs normalised
    count: int
    examples: list[str]  # up to three reference_ids


@dataclass(frozen=True, slots=True)
class Bin:
    start: float  # seconds
    end: float
    jobs: int


@dataclass(frozen=True, slots=True)
class Processing:
    measured: int  # jobs for which the API reported both times
    p50: float | None  # seconds
    p90: float | None
    p99: float | None
    histogram: list[Bin]
    measures: str = PROCESSING_MEASURES


@dataclass(frozen=True, slots=True)
class Downloads:
    downloaded: int
    bytes: int
    failed: int


@dataclass(frozen=True, slots=True)
class BatchReport:
    batch: str
    jobs: int
    states: dict[str, int]
    remote_statuses: dict[str, int]
    throughput: Throughput
    bucket_seconds: int
    timeline: list[Point]
    throttling: Throttling
    failures: list[Failure]
    processing: Processing
    downloads: Downloads


@dataclass(frozen=True, slots=True)
class Report:
    generated_at: str
    batches: list[BatchReport]
    schema_version: int = field(default=SCHEMA_VERSION)

    def as_dict(self) -> dict[str, Any]:
        """The JSON document, its version first."""
        fields = asdict(self)
        return {"schema_version": fields.pop("schema_version"), **fields}


def build(db: Database, batch: str | None = None, now: datetime | None = None) -> Report:
    """The report of one batch, or of every batch."""
    by_batch = _group(q.state_counts(db, batch))
    submitted = _group(q.submitted_times(db, batch))
    completed = _group(q.completed_times(db, batch))
    trouble = _group(q.trouble_attempts(db, batch))
    failed = _group(q.failed_jobs(db, batch))
    remote = _group(q.remote_times(db, batch))
    downloads = _group(q.download_counts(db, batch))
    batches = [
        _batch(
            name,
            by_batch[name],
            submitted.get(name, []),
            completed.get(name, []),
            trouble.get(name, []),
            failed.get(name, []),
            remote.get(name, []),
            downloads.get(name, []),
        )
        for name in sorted(by_batch)
    ]
    return Report(iso(now or datetime.now(UTC).replace(tzinfo=None)) or "", batches)


def _group(rows: Iterable[tuple[Any, ...]]) -> dict[str, list[tuple[Any, ...]]]:
    """Rows keyed by their first column (the batch), without it."""
    out: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        out[row[0]].append(row[1:])
    return out


def _batch(
    name: str,
    counts: list[tuple[Any, ...]],
    submitted: list[tuple[Any, ...]],
    completed: list[tuple[Any, ...]],
    trouble: list[tuple[Any, ...]],
    failed: list[tuple[Any, ...]],
    remote: list[tuple[Any, ...]],
    downloads: list[tuple[Any, ...]],
) -> BatchReport:
    states: Counter[str] = Counter()
    remote_statuses: Counter[str] = Counter()
    for state, status, n in counts:
        states[state] += n
        if status is not None:
            remote_statuses[status] += n
    sent = sorted(_seconds(t) for (t,) in submitted)
    done = sorted(_seconds(t) for (t,) in completed)
    events = [(_seconds(at), _trouble_kind(outcome, status)) for at, outcome, status in trouble]
    width, timeline = _timeline(sent, done, events)
    by_state = {state: (n, size) for state, n, size in downloads}
    return BatchReport(
        batch=name,
        jobs=sum(states.values()),
        states=dict(sorted(states.items())),
        remote_statuses=dict(sorted(remote_statuses.items())),
        throughput=_throughput(sent, done),
        bucket_seconds=width,
        timeline=timeline,
        throttling=_throttling(timeline, width, events),
        failures=failures([(ref, err) for ref, err in failed]),
        processing=processing(_durations(remote)),
        downloads=Downloads(
            downloaded=by_state.get("downloaded", (0, 0))[0],
            bytes=by_state.get("downloaded", (0, 0))[1],
            failed=by_state.get("failed", (0, 0))[0],
        ),
    )


# -- time ----------


def _seconds(t: datetime) -> float:
    """Unix seconds of a stored time (naive values are UTC)."""
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def iso(t: datetime | float | None) -> str | None:
    if t is None:
        return None
    if isinstance(t, float | int):
        t = datetime.fromtimestamp(t, UTC)
    t = t.astimezone(UTC) if t.tzinfo else t
    return t.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _throughput(sent: list[float], done: list[float]) -> Throughput:
    def per_min(n: int, start: float, end: float) -> float | None:
        return round(n / ((end - start) / 60), 2) if n and end > start else None

    first = sent[0] if sent else None
    return Throughput(
        first_submitted=iso(first),
        last_submitted=iso(sent[-1] if sent else None),
        last_completed=iso(done[-1] if done else None),
        submitted_per_min=per_min(len(sent), sent[0], sent[-1]) if sent else None,
        completed_per_min=per_min(len(done), first, done[-1]) if done and first else None,
    )


def _trouble_kind(outcome: str, status: int | None) -> str:
    if outcome == Action.HALT_BATCH:
        return "halts"
    return "rate_limited" if status == 429 else "server_errors"


def _bucket_width(span: float) -> int:
    for width in _BUCKETS:
        if span / width < MAX_POINTS:
            return width
    return 86400 * (math.floor(span / 86400 / MAX_POINTS) + 1)


def _timeline(
    sent: list[float], done: list[float], events: list[tuple[float, str]]
) -> tuple[int, list[Point]]:
    times = sent + done + [t for t, _ in events]
    if not times:
        return 1, []
    first, last = min(times), max(times)
    width = _bucket_width(last - first)
    origin = math.floor(first / width) * width
    n = int((last - origin) // width) + 1
    sent_in, done_in = [0] * n, [0] * n
    kinds: list[Counter[str]] = [Counter() for _ in range(n)]
    for t in sent:
        sent_in[int((t - origin) // width)] += 1
    for t in done:
        done_in[int((t - origin) // width)] += 1
    for t, kind in events:
        kinds[int((t - origin) // width)][kind] += 1
    points, total_sent, total_done = [], 0, 0
    for i in range(n):
        total_sent += sent_in[i]
        total_done += done_in[i]
        points.append(
            Point(
                start=iso(float(origin + i * width)) or "",
                submitted=total_sent,
                completed=total_done,
                rate_limited=kinds[i]["rate_limited"],
                server_errors=kinds[i]["server_errors"],
                halts=kinds[i]["halts"],
            )
        )
    return width, points


def _throttling(timeline: list[Point], width: int, events: list[tuple[float, str]]) -> Throttling:
    periods: list[Period] = []
    run: list[Point] = []
    for point in [*timeline, None]:
        if point is not None and (point.rate_limited or point.server_errors or point.halts):
            run.append(point)
            continue
        if run:
            end = datetime.fromisoformat(run[-1].start.replace("Z", "+00:00")).timestamp() + width
            periods.append(
                Period(
                    start=run[0].start,
                    end=iso(end) or "",
                    rate_limited=sum(p.rate_limited for p in run),
                    server_errors=sum(p.server_errors for p in run),
                    halts=sum(p.halts for p in run),
                )
            )
            run = []
    kinds = Counter(kind for _, kind in events)
    return Throttling(kinds["rate_limited"], kinds["server_errors"], kinds["halts"], periods)


# -- failures ----------

_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I)
_HEX = re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{12,}\b", re.IGNORECASE)
# A number standing alone (a count, a status, a size, seconds), not one ending a word (mp4, h264).
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")
_SPACE = re.compile(r"\s+")


def normalise(message: str | None) -> str:
    """An error with what varies from job to job (URLs, ids, numbers) replaced, so that one
    cause is one group."""
    if not message:
        return "(no error recorded)"
    text = scrub(message)
    text = _URL.sub("<url>", text)
    text = _UUID.sub("<id>", text)
    text = _HEX.sub("<id>", text)
    text = _NUMBER.sub("<n>", text)
    return _SPACE.sub(" ", text).strip()[:300]


def failures(rows: Iterable[tuple[str, str | None]]) -> list[Failure]:
    """Failed jobs grouped by their normalised error, the commonest first."""
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    for ref, error in rows:
        key = normalise(error)
        counts[key] += 1
        if len(examples[key]) < EXAMPLES:
            examples[key].append(ref)
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [Failure(error, n, examples[error]) for error, n in ordered]


# -- processing time ----------


def _parse(text: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _durations(rows: Iterable[tuple[Any, ...]]) -> list[float]:
    out = []
    for started, finished in rows:
        a, b = _parse(started), _parse(finished)
        if a is not None and b is not None and b >= a:
            out.append((b - a).total_seconds())
    return out


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _nice(x: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least x."""
    power = 10.0 ** math.floor(math.log10(x))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= x * (1 - 1e-9))


def processing(durations: list[float]) -> Processing:
    if not durations:
        return Processing(0, None, None, None, [])
    # In whole milliseconds: bins of floats would split equal times by their rounding errors.
    values = sorted(round(d * 1000) for d in durations)
    low, high = values[0], values[-1]
    width = max(1, round(_nice(max((high - low) / MAX_BINS, high / 100, 1))))
    origin = low // width * width
    counts = [0] * ((high - origin) // width + 1)
    for v in values:
        counts[(v - origin) // width] += 1
    histogram = [
        Bin((origin + i * width) / 1000, (origin + (i + 1) * width) / 1000, c)
        for i, c in enumerate(counts)
    ]
    return Processing(
        measured=len(values),
        p50=percentile(values, 50) / 1000,
        p90=percentile(values, 90) / 1000,
        p99=percentile(values, 99) / 1000,
        histogram=histogram,
    )
