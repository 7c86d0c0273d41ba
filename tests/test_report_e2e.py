"""`dubrunner report` after a real batch against the emulator, with completions, remote failures,
throttling and an outage: the table, JSON and HTML agree on every number, and the HTML page works
in a real (headless) Chromium: no console error, charts with visible marks, a screenshot that is
not blank, nothing fetched."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dubrunner.emulator import Emulator, EmulatorConfig
from tests.browser import Browser, chromium_or_skip, picture
from tests.conftest import (
    BOTH_DATABASES,
    TOKEN,
    Database,
    clean_env,
    run_cli,
    start,
    write_manifest,
)
from tests.report_parse import as_json, parse_html, parse_table

pytestmark = pytest.mark.slow

N = 80
FAILING = frozenset({5, 17, 33})
OUTPUT_BYTES = 2048
COMPLETE_AFTER = 0.6


@dataclass
class Run:
    emulator: Emulator
    env: dict[str, str]
    workdir: Path
    table: str
    document: dict[str, Any]
    html: Path


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    work = tmp_path_factory.mktemp("report")
    emulator = Emulator(
        EmulatorConfig(
            tokens=(TOKEN,),
            seed=7,
            rate=15,  # dubrunner is told 40 a second: the server answers 429 to the rest
            latency_ms=30,
            complete_after=COMPLETE_AFTER,
            output_bytes=OUTPUT_BYTES,
        )
    ).start()
    env = clean_env(
        CHAMELAION_BASE_URL=emulator.base_url,
        CHAMELAION_API_KEY=TOKEN,
        DUBRUNNER_DB=f"sqlite:///{work / 'jobs.db'}",
        DUBRUNNER_RETRY_WAIT="0.02",
        DUBRUNNER_LOOKUP_GRACE="0.3",
    )
    try:
        manifest = write_manifest(work / "m.yaml", N, failing=FAILING)
        proc = start(
            [
                "submit",
                str(manifest),
                "--wait",
                "--interval",
                "0.5",
                "--rate",
                "40",
                "--concurrency",
                "4",
            ],
            env,
        )
        deadline = time.monotonic() + 90
        while emulator.stats.accepted < 25 and time.monotonic() < deadline:
            time.sleep(0.02)
        began = time.time()
        emulator.update(outage_from=began, outage_until=began + 3)  # every request fails
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 1, err  # three jobs failed at the API
        assert "3 failed remotely" in err, err
        fetched = run_cli(["fetch", "--out", str(work / "out")], env)
        assert fetched.code == 0, fetched.err
        table = run_cli(["report"], env)
        as_json = run_cli(["report", "--format", "json"], env)
        html = work / "report.html"
        as_html = run_cli(["report", "--format", "html", "--out", str(html)], env)
        for r in (table, as_json, as_html):
            assert r.code == 0, r.err
        yield Run(emulator, env, work, table.out, json.loads(as_json.out), html)
    finally:
        emulator.stop()


def test_table_json_and_html_agree_on_a_real_batch(batch_run: Run) -> None:
    emulator = batch_run.emulator
    [b] = batch_run.document["batches"]
    completed = N - len(FAILING)
    assert b["jobs"] == N
    assert b["states"] == {"completed": completed, "failed": len(FAILING)}
    assert b["remote_statuses"] == {"completed": completed, "failed": len(FAILING)}
    assert b["failures"] == [
        {
            "error": "no face found in the video",
            "count": 3,
            "examples": [f"b-ep{i:05d}" for i in sorted(FAILING)],
        }
    ]
    # Throttled by the server's rate, and failing through the outage: both counted, and no
    # more than the emulator answered so.
    t = b["throttling"]
    assert 0 < t["rate_limited"] <= emulator.stats.by_status.get(429, 0)
    assert 0 < t["server_errors"] <= emulator.stats.outage_answers
    assert any(p["server_errors"] for p in t["periods"])
    assert any(p["rate_limited"] for p in t["periods"])
    assert b["timeline"][-1]["submitted"] == N
    assert b["timeline"][-1]["completed"] == completed
    assert b["throughput"]["submitted_per_min"] > 0
    # The emulator starts a request a third of the way through and finishes it at the end.
    p = b["processing"]
    assert p["measured"] == N
    assert abs(p["p50"] - COMPLETE_AFTER * 2 / 3) < 0.01
    assert sum(h["jobs"] for h in p["histogram"]) == N
    assert b["downloads"] == {
        "downloaded": completed,
        "bytes": completed * OUTPUT_BYTES,
        "failed": 0,
    }
    # Every number the table and the page show is the JSON's.
    assert as_json(parse_table(batch_run.table)) == batch_run.document["batches"]
    assert as_json(parse_html(batch_run.html.read_text())) == batch_run.document["batches"]


_MARKS = """
[...document.querySelectorAll('svg.pygal-chart')].map(svg => {
  const box = svg.getBoundingClientRect();
  const plot = svg.querySelector('.plot > .background').getBoundingClientRect();
  const marks = [...svg.querySelectorAll('.series rect, .series path, .series circle')]
    .filter(e => { const b = e.getBoundingClientRect(); return b.width > 0 && b.height > 0; });
  // A mark drawn off its plot area (a dot's radius of slack) is a chart drawn wrong.
  const outside = marks.filter(e => { const b = e.getBoundingClientRect();
    return b.left < plot.left - 6 || b.right > plot.right + 6 || b.top < plot.top - 6
      || b.bottom > plot.bottom + 6; });
  const title = svg.querySelector('.title');
  return {title: title ? title.textContent : '', width: box.width, height: box.height,
          marks: marks.length, outside: outside.length};
})
"""


def test_the_html_report_in_a_real_browser(batch_run: Run, tmp_path: Path) -> None:
    exe = chromium_or_skip()
    browser = Browser(exe, tmp_path / "profile")
    try:
        url = batch_run.html.resolve().as_uri()
        browser.open(url)
        charts = browser.evaluate(_MARKS)
        shot = browser.screenshot()
    finally:
        browser.close()
    (tmp_path / "report.png").write_bytes(shot)
    assert browser.console_errors() == []
    assert [u for u in browser.requests() if u != url] == []  # nothing fetched from anywhere
    assert len(charts) == 4, charts  # states per batch, over time, failures, processing time
    for chart in charts:
        assert chart["width"] > 300 and chart["height"] > 100, chart
        assert chart["marks"] > 0 and chart["outside"] == 0, chart
    over_time = next(c for c in charts if c["title"].startswith("Submitted and completed"))
    assert over_time["marks"] >= 4  # two lines, their dots, and the throttling marks
    colours, drawn = picture(shot)
    assert colours >= 8 and drawn > 0.02, (colours, drawn)


@BOTH_DATABASES
def test_report_on_either_database(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.3)
    manifest = write_manifest(tmp_path / "m.yaml", 20, batch="pg", failing=frozenset({4, 9}))
    r = run_cli(["submit", str(manifest), "--wait", "--interval", "0.5"], env)
    assert r.code == 1, r.err  # two failed at the API
    r = run_cli(["report", "--batch", "pg", "--format", "json"], env)
    assert r.code == 0, r.err
    [b] = json.loads(r.out)["batches"]
    assert b["states"] == {"completed": 18, "failed": 2}
    assert b["failures"] == [
        {
            "error": "no face found in the video",
            "count": 2,
            "examples": ["pg-ep00004", "pg-ep00009"],
        }
    ]
    assert b["timeline"][-1]["submitted"] == 20 and b["processing"]["measured"] == 20
    assert abs(b["processing"]["p50"] - 0.2) < 0.01
    table = run_cli(["report", "--batch", "pg"], env)
    assert as_json(parse_table(table.out)) == [b]
