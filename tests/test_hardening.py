"""Regression tests for hangs, tracebacks and leaks found by attacking dubrunner from outside."""

from __future__ import annotations

import httpx

from dubrunner.emulator import Emulator
from tests.conftest import TOKEN


def test_emulator_answers_after_its_stats(emulator: Emulator) -> None:
    with httpx.Client(base_url=emulator.root_url, timeout=3) as client:
        for _ in range(2):
            stats = client.get("/_emulator/stats")
            assert stats.status_code == 200 and "generate" in stats.json()
        answer = client.post(
            "/api/v1/lipsync/generate",
            headers={"x-api-key": TOKEN},
            json={
                "inputs": [
                    {"type": "video", "url": "https://cdn.test/v.mp4"},
                    {"type": "audio", "url": "https://cdn.test/a.wav"},
                ],
                "reference_id": "after-stats",
            },
        )
    assert answer.status_code == 200, answer.text
    assert list(emulator.accepted()) == ["after-stats"]
