"""Hostile manifests: whatever the bytes, the only outcomes are success or a clean exit 2.

A fixed seed and a bounded number of examples here (`make test`); `make fuzz` runs many more
(HYPOTHESIS_PROFILE=fuzz).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dubrunner.cli import cli
from dubrunner.emulator import Emulator
from tests.conftest import TOKEN, db_rows

settings.register_profile(
    "ci",
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

VALID = b"""batch: fz
defaults:
  disable_active_speaker_detection: false
jobs:
  - reference_id: fz-1
    video: https://cdn.test/1.mp4
    audio: https://cdn.test/1.wav
  - inputs:
      - {type: audio, url: 'https://cdn.test/2.wav'}
      - {type: video, url: 'https://cdn.test/2.mp4'}
"""


def validate(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(content)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code in (0, 2), (content[:200], result.output, result.exception)
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert result.output.startswith("error: "), result.output


@given(st.binary(max_size=2000))
def test_random_bytes(tmp_path: Path, content: bytes) -> None:
    validate(tmp_path, content)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(["https://cdn.test/a.mp4", "video", "audio", "jobs", "inputs", "~", "yes"]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(
            st.one_of(
                st.sampled_from(
                    [
                        "batch",
                        "jobs",
                        "defaults",
                        "video",
                        "audio",
                        "inputs",
                        "type",
                        "url",
                        "reference_id",
                    ]
                ),
                st.text(max_size=8),
            ),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=30,
)


@given(documents)
def test_arbitrary_yaml_documents(tmp_path: Path, doc: object) -> None:
    validate(tmp_path, yaml.safe_dump(doc, allow_unicode=True).encode())


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        at = draw(st.integers(0, len(data)))
        if kind == "delete":
            del data[at : at + draw(st.integers(1, 20))]
        elif kind == "insert":
            data[at:at] = draw(
                st.sampled_from(
                    [
                        b"\n",
                        b" ",
                        b"- ",
                        b": ",
                        b"&a ",
                        b"*a",
                        b"!!python/name:os.system ",
                        b"'",
                        b"{",
                        b"]",
                        b"\t",
                        b"\xff",
                        b"\x00",
                        b"https://x/",
                    ]
                )
            )
        elif kind == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        else:
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, max(0, len(lines) - 1)))
            lines.insert(i, lines[i] if lines else b"")
            data = bytearray(b"\n".join(lines))
    return bytes(data)


@given(mutated())
def test_mutated_valid_manifests(tmp_path: Path, content: bytes) -> None:
    validate(tmp_path, content)


@pytest.fixture
def api_env(emulator: Emulator, tmp_path: Path) -> dict[str, str]:
    return {
        "CHAMELAION_BASE_URL": emulator.base_url,
        "CHAMELAION_API_KEY": TOKEN,
        "DUBRUNNER_RETRY_WAIT": "0.01",
    }


@given(mutated())
@settings(max_examples=int(os.environ.get("DUBRUNNER_FUZZ_SUBMITS", "25")))
def test_submit_mutated_manifests_all_or_nothing(
    tmp_path: Path, api_env: dict[str, str], content: bytes
) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(content)
    db = tmp_path / f"fz-{abs(hash(content))}.db"
    result = CliRunner().invoke(cli, ["submit", str(path), "--db", str(db)], env=api_env)
    # CliRunner turns an uncaught exception into exit 1 too: only a SystemExit (or none) is a
    # verdict of the program, so exit 1 here is a job that failed at the API, never a crash.
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not crashed, (content, result.output, repr(result.exception))
    assert result.exit_code in (0, 1, 2), (content, result.output, result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:  # refused: nothing loaded, nothing sent
        assert not db.exists() or db_rows(db, "SELECT count(*) FROM jobs") == [(0,)]


HOSTILE = {
    "billion_laughs": b"x-a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']\n"
    + b"".join(
        f"x-{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n".encode()
        for i in range(8)
    )
    + b"jobs: *i\n",
    "alias_bomb_in_a_job": b"x-1: &x [1, 2]\nx-2: &y [*x, *x, *x, *x, *x, *x, *x, *x]\n"
    b"x-3: &z [*y, *y, *y, *y, *y, *y, *y, *y]\njobs:\n  - {video: *z, audio: *z}\n",
    "deep_nesting": b"jobs: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "deep_mappings": b"jobs:\n" + b"".join(b"  " * i + b"- a:\n" for i in range(400)),
    "huge_string": b"jobs:\n  - video: 'https://x/"
    + b"a" * 5_000_000
    + b"'\n    audio: 'https://x/a'\n",
    "python_object": b"jobs: !!python/object/apply:os.system ['echo pwned']\n",
    "python_name": b"jobs:\n  - video: !!python/name:os.system\n    audio: https://x/a\n",
    "custom_tag": b"jobs:\n  - !job {video: 'https://x/v', audio: 'https://x/a'}\n",
    "many_documents": b"jobs: []\n---\njobs: []\n",
    "nul_bytes": b"jobs:\n  - video: 'https://x/\x00'\n",
    "utf16": "jobs: []\n".encode("utf-16"),
    "merge_keys": b"x-base: &b {video: 'https://x/v'}\njobs:\n  - <<: *b\n    audio: 'https://x/a'\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_documents(tmp_path: Path, name: str) -> None:
    validate(tmp_path, HOSTILE[name])
