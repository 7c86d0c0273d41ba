"""Regression tests for hangs, tracebacks and leaks found by attacking dubrunner from outside."""

from __future__ import annotations

import httpx
import pytest

from dubrunner.emulator import Emulator
from dubrunner.manifest import ManifestError
from dubrunner.manifest import parse as parse_manifest
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


@pytest.mark.parametrize(
    ("batch", "ref"),
    [('"b\\n"', "ep1"), ("b", '"ep1\\n"'), ("b", "'ep1\n\n  '")],
    ids=["batch", "reference_id", "folded"],
)
def test_a_trailing_newline_is_not_a_valid_name(batch: str, ref: str) -> None:
    text = (
        f"batch: {batch}\njobs:\n  - reference_id: {ref}\n"
        "    video: https://cdn.test/v.mp4\n    audio: https://cdn.test/a.wav\n"
    )
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, "m.yaml", "m")
    assert len(caught.value.problems) == 1
