"""Progress without a terminal (piped, a log file): a line with the UTC time and an ETA, only
when something changed (at most every 5 s), and at least once a minute."""

from __future__ import annotations

import io
import re

from dubrunner.output import ProgressDisplay

UTC_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def test_piped_lines_carry_the_time_and_an_eta_and_only_news() -> None:
    # Failed before: no time, no ETA, and an identical line every 5 s for hours.
    now = [0.0]
    out = io.StringIO()
    display = ProgressDisplay("submitting", 10, False, stream=out, clock=lambda: now[0])

    def lines() -> list[str]:
        return out.getvalue().splitlines()

    def at(t: float, completed: int, detail: str, left: int | None = None) -> None:
        now[0] = t
        display.update(completed, detail, left)

    at(1, 0, "submitted 0 · failed 3 · pending 7", left=7)
    assert lines() == []  # a short run prints only its end
    at(6, 0, "submitted 0 · failed 3 · pending 7", left=7)
    assert re.fullmatch(
        UTC_TIME + r" submitting 0/10 · submitted 0 · failed 3 · pending 7 · ETA unknown",
        lines()[-1],
    )
    for t in range(7, 60):  # nothing new: nothing said
        at(t, 0, "submitted 0 · failed 3 · pending 7", left=7)
    assert len(lines()) == 1
    at(60, 2, "submitted 2 · failed 3 · pending 5", left=5)
    assert lines()[-1].endswith("submitting 2/10 · submitted 2 · failed 3 · pending 5 · 2.0/min "
                                "· ETA 0:02:30")  # fmt: skip
    at(62, 3, "submitted 3 · failed 3 · pending 4", left=4)
    assert len(lines()) == 2  # news, but under 5 s after the last line
    at(66, 3, "submitted 3 · failed 3 · pending 4", left=4)
    assert len(lines()) == 3
    at(125, 3, "submitted 3 · failed 3 · pending 4", left=4)
    assert len(lines()) == 3
    at(126, 3, "submitted 3 · failed 3 · pending 4", left=4)
    assert len(lines()) == 4  # the same, a minute on: still alive
    at(200, 10, "submitted 10 · failed 0 · pending 0", left=0)
    assert "ETA" not in lines()[-1]


def test_quiet_says_nothing() -> None:
    out = io.StringIO()
    display = ProgressDisplay("polling", 3, True, stream=out, clock=lambda: 100.0)
    display.update(1, "completed 1")
    assert out.getvalue() == ""
