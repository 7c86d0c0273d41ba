"""`dubrunner report` on a made-up history whose every number is known: the numbers, and the
table, JSON and HTML agreeing on each of them."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from dubrunner.cli import cli
from dubrunner.db import Database
from dubrunner.report import build, failures, normalise, processing
from dubrunner.report_render import render_html
from tests.browser import chromium_or_skip
from tests.report_data import T0, fill
from tests.report_parse import as_json, parse_html, parse_table


def _nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def test_the_numbers_of_a_known_history(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    want = fill(path, 600)
    db = Database(f"sqlite:///{path}")
    try:
        report = build(db)
    finally:
        db.close()
    [b] = report.batches
    assert b.batch == "hist" and b.jobs == 600
    assert b.states == dict(sorted(want.states.items()))
    assert b.remote_statuses == {
        "COMPLETED": want.states["completed"],
        "FAILED": len(want.failures["no face found in frame <n>"]),
    }
    assert (
        (b.throttling.rate_limited, b.throttling.server_errors, b.throttling.halts)
        == (
            want.rate_limited,
            want.server_errors,
            want.halts,
        )
        == (19, 10, 1)
    )  # job 100 and job 300 failed before sending
    assert {f.error: f.count for f in b.failures} == {k: len(v) for k, v in want.failures.items()}
    assert {f.error: f.examples for f in b.failures} == {k: v[:3] for k, v in want.failures.items()}
    p = b.processing
    assert p.measured == len(want.durations)
    for got, pct in ((p.p50, 50), (p.p90, 90), (p.p99, 99)):
        assert got == _nearest_rank(want.durations, pct)
    assert sum(h.jobs for h in p.histogram) == p.measured
    assert all(h.end > h.start for h in p.histogram) and len(p.histogram) <= 21
    assert (b.downloads.downloaded, b.downloads.bytes, b.downloads.failed) == (
        want.downloaded,
        want.bytes,
        want.download_failed,
    )
    submitted = sum(1 for _ in want.durations)
    assert b.timeline[-1].submitted == submitted
    assert b.timeline[-1].completed == want.states["completed"]
    assert len(b.timeline) <= 60
    assert sum(x.rate_limited for x in b.timeline) == 19
    # 10 a second from T0: first and last accepted, and the rate between them.
    assert b.throughput.first_submitted == (T0.isoformat() + "Z")
    first, last = 0.1, 594 / 10  # job 0 failed before sending; 594 is the last sent
    assert b.throughput.submitted_per_min == round(submitted / ((last - first) / 60), 2)
    # The 429s (jobs 100-119, 10-12 s after T0) make a period of their own, before the 500s.
    periods = b.throttling.periods
    assert periods[0].rate_limited == 19 and periods[0].server_errors == 0
    assert periods[0].start <= "2026-01-02T03:00:10Z" < periods[0].end
    assert any(x.server_errors == 10 for x in periods)


def test_failures_are_grouped_by_their_normalised_message() -> None:
    rows = [
        ("a", "download of https://x.example/a.mp4?sig=1 failed: 404"),
        ("b", "download of https://y.example/b.mp4 failed: 500"),
        ("c", "request 3f2b8c1e-1d2a-4c5b-9e8f-0a1b2c3d4e5f timed out after 30.5 s"),
        ("d", "request 9f2b8c1e-1d2a-4c5b-9e8f-0a1b2c3d4e5f timed out after 12 s"),
        ("e", "download of http://z.example/c failed: 403"),
        ("f", "download of http://z.example/d failed: 403"),
        ("g", None),
    ]
    groups = failures(rows)
    assert [(g.error, g.count, g.examples) for g in groups] == [
        ("download of <url> failed: <n>", 4, ["a", "b", "e"]),
        ("request <id> timed out after <n> s", 2, ["c", "d"]),
        ("(no error recorded)", 1, ["g"]),
    ]
    assert normalise("job deadbeefcafe0123 failed") == "job <id> failed"
    assert normalise("  two\n lines  ") == "two lines"
    assert (
        normalise("x.mp4 (h264) gave 404 after 3.5 s, job-17")
        == "x.mp4 (h264) gave <n> after <n> s, job-<n>"
    )


def test_processing_percentiles_and_histogram() -> None:
    durations = [float(i) for i in range(1, 101)]
    p = processing(durations)
    assert (p.measured, p.p50, p.p90, p.p99) == (100, 50.0, 90.0, 99.0)
    assert sum(h.jobs for h in p.histogram) == 100
    assert [h.start for h in p.histogram][:2] == [0.0, 5.0]  # 5 s bins: (100 - 1) / 20 -> 5
    same = processing([0.4000001, 0.3999999, 0.4])
    assert [(h.start, h.end, h.jobs) for h in same.histogram] == [(0.4, 0.405, 3)]
    assert processing([]).histogram == [] and processing([]).p50 is None


def test_table_json_and_html_agree_on_every_number(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    fill(path, 400)
    fill(path, 50, batch="second")  # two batches: each section under its own heading
    db = ["--db", str(path)]
    runner = CliRunner()
    as_table = runner.invoke(cli, ["report", *db])
    as_json_ = runner.invoke(cli, ["report", "--format", "json", *db])
    out = tmp_path / "r.html"
    as_html = runner.invoke(cli, ["report", "--format", "html", "--out", str(out), *db])
    for r in (as_table, as_json_, as_html):
        assert r.exit_code == 0, r.output
    document = json.loads(as_json_.stdout)
    assert document["schema_version"] == 1
    batches = document["batches"]
    assert [(b["batch"], b["jobs"]) for b in batches] == [("hist", 400), ("second", 50)]
    assert as_json(parse_table(as_table.stdout)) == batches
    assert as_json(parse_html(out.read_text())) == batches


def test_report_of_one_batch_an_unknown_batch_and_an_empty_database(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    fill(path, 60, batch="one")
    fill(path, 40, batch="two")
    runner = CliRunner()
    one = runner.invoke(cli, ["report", "--batch", "two", "--format", "json", "--db", str(path)])
    assert [b["batch"] for b in json.loads(one.stdout)["batches"]] == ["two"]
    both = runner.invoke(cli, ["report", "--format", "json", "--db", str(path)])
    assert [b["batch"] for b in json.loads(both.stdout)["batches"]] == ["one", "two"]
    unknown = runner.invoke(cli, ["report", "--batch", "nope", "--db", str(path)])
    assert unknown.exit_code == 2 and "no batch 'nope'" in unknown.output
    empty = tmp_path / "empty.db"
    r = runner.invoke(cli, ["report", "--format", "json", "--db", str(empty)])
    assert r.exit_code == 2 and "no database at" in r.output and not empty.exists()
    assert runner.invoke(cli, ["db", "upgrade", "--db", str(empty)]).exit_code == 0
    r = runner.invoke(cli, ["report", "--format", "json", "--db", str(empty)])
    assert r.exit_code == 0 and json.loads(r.stdout)["batches"] == []
    bad = runner.invoke(
        cli,
        ["report", "--format", "html", "--out", str(tmp_path / "no" / "r.html"), "--db", str(path)],
    )
    assert bad.exit_code == 2 and "cannot write" in bad.output


def test_the_html_page_is_self_contained(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    fill(path, 300)
    db = Database(f"sqlite:///{path}")
    try:
        page = render_html(build(db))
    finally:
        db.close()
    assert page.count("<svg") == 4  # states per batch, over time, failures, processing time
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"""(?:src|href)\s*=|url\(\s*['"]?(?!#)""", page)


def test_without_chromium_the_browser_test_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must have it"):
        chromium_or_skip()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        chromium_or_skip()
