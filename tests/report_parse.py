"""Reading `dubrunner report`'s table and HTML back into the JSON's shape, written apart from the
report's own code so that a test can hold the three formats against each other."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

Parsed = dict[str, dict[str, Any]]  # batch -> {"jobs", "sections": {title: rows}, "measures"}

_BATCH = re.compile(r"^Batch (.+): ([\d,]+) jobs$")


def parse_table(text: str) -> Parsed:
    out: Parsed = {}
    current: dict[str, Any] | None = None
    title: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if m := _BATCH.match(stripped):
            current = {"jobs": _num(m.group(2)), "sections": {}, "measures": None}
            out[m.group(1)] = current
        elif current is None or not stripped:
            continue
        elif stripped.startswith("processing time: "):
            current["measures"] = stripped.removeprefix("processing time: ")
        elif stripped.startswith("│"):
            assert title is not None
            cells = [c.strip() for c in stripped.strip("│").split("│")]
            current["sections"][title].append(cells)
        elif stripped[0] not in "┏┃┡└┗":
            title = stripped
            current["sections"][title] = []
    return out


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.out: Parsed = {}
        self.current: dict[str, Any] | None = None
        self.tag: str | None = None
        self.text = ""
        self.title = ""
        self.row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h2", "caption", "td", "p"):
            self.tag, self.text = tag, ""
        elif tag == "tr":
            self.row = []

    def handle_data(self, data: str) -> None:
        if self.tag:
            self.text += data

    def handle_endtag(self, tag: str) -> None:
        if tag != self.tag and tag != "tr":
            return
        text = self.text.strip()
        if tag == "h2" and (m := _BATCH.match(text)):
            self.current = {"jobs": _num(m.group(2)), "sections": {}, "measures": None}
            self.out[m.group(1)] = self.current
        elif tag == "caption" and self.current is not None:
            self.title = text
            self.current["sections"][text] = []
        elif tag == "td" and self.row is not None:
            self.row.append(text)
        elif tag == "tr" and self.row and self.current is not None:
            self.current["sections"][self.title].append(self.row)
            self.row = None
        elif tag == "p" and self.current is not None and text.startswith("Processing time: "):
            self.current["measures"] = text.removeprefix("Processing time: ").rstrip(".")
        if tag != "tr":
            self.tag = None


def parse_html(text: str) -> Parsed:
    parser = _Html()
    parser.feed(text)
    return parser.out


def _num(text: str) -> Any:
    if text == "—":
        return None
    plain = text.replace(",", "")
    try:
        return int(plain)
    except ValueError:
        return float(plain)


def _value(text: str) -> Any:
    try:
        return _num(text)
    except ValueError:
        return text


def as_json(parsed: Parsed) -> list[dict[str, Any]]:
    """The parsed batches in the JSON's shape (the `batches` list)."""
    return [_batch(name, b) for name, b in parsed.items()]


def _batch(name: str, b: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, list[list[str]]] = b["sections"]
    over = next(t for t in s if t.startswith("Over time"))
    bucket = re.fullmatch(r"Over time \(every ([\d,]+) s\)", over)
    assert bucket, over

    def measures(title: str) -> dict[str, Any]:
        return {row[0]: _value(row[1]) for row in s.get(title, [])}

    states = measures("Jobs by state")
    total = states.pop("total")
    throughput = measures("Throughput")
    throttling = measures("Throttling and outages (answers)")
    processing = measures("Remote processing time (s)")
    downloads = measures("Downloads")
    return {
        "batch": name,
        "jobs": b["jobs"] if b["jobs"] == total else ("mismatch", b["jobs"], total),
        "states": states,
        "remote_statuses": measures("Jobs by remote status"),
        "throughput": {
            "first_submitted": throughput["first submitted (UTC)"],
            "last_submitted": throughput["last submitted (UTC)"],
            "last_completed": throughput["last completed (UTC)"],
            "submitted_per_min": throughput["submitted per minute"],
            "completed_per_min": throughput["completed per minute"],
        },
        "bucket_seconds": _num(bucket.group(1)),
        "timeline": [
            {
                "start": r[0],
                "submitted": _num(r[1]),
                "completed": _num(r[2]),
                "rate_limited": _num(r[3]),
                "server_errors": _num(r[4]),
                "halts": _num(r[5]),
            }
            for r in s[over]
        ],
        "throttling": {
            "rate_limited": throttling["rate limited (429)"],
            "server_errors": throttling["server errors (5xx, no answer)"],
            "halts": throttling["halts"],
            "periods": [
                {
                    "start": r[0],
                    "end": r[1],
                    "rate_limited": _num(r[2]),
                    "server_errors": _num(r[3]),
                    "halts": _num(r[4]),
                }
                for r in s.get("Throttled periods", [])
            ],
        },
        "failures": [
            {"error": r[1], "count": _num(r[0]), "examples": r[2].split()}
            for r in s.get("Failures by error", [])
        ],
        "processing": {
            "measured": processing["jobs measured"],
            "p50": processing["p50"],
            "p90": processing["p90"],
            "p99": processing["p99"],
            "histogram": [
                {"start": _num(r[0]), "end": _num(r[1]), "jobs": _num(r[2])}
                for r in s.get("Processing-time histogram (s)", [])
            ],
            "measures": b["measures"],
        },
        "downloads": {
            "downloaded": downloads["downloaded"],
            "bytes": downloads["bytes"],
            "failed": downloads["failed"],
        },
    }
