"""Hostile manifests: whatever the bytes, the only outcomes are success or a clean exit 2; and for
every kind of hostile document, which of the two, with what words (HOSTILE).

A fixed seed and a bounded number of examples here (`make test`); `make fuzz` runs many more
(HYPOTHESIS_PROFILE=fuzz).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
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


class Sparse(int):
    """A file of this many bytes written as one hole: as large as needed, at no cost."""


def validate(tmp_path: Path, content: bytes | Sparse) -> Result:
    """`dubrunner validate` on a document, held to the fuzzing property: the program's own verdict
    (exit 0, or 2 with an error), never a crash. Returns the result, for the cases that pin
    which verdict."""
    path = tmp_path / "fuzz.yaml"
    if isinstance(content, Sparse):
        with path.open("wb") as f:
            f.truncate(content)
    else:
        path.write_bytes(content)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    shown = content[:200] if isinstance(content, bytes) else f"{int(content):,} bytes"
    assert result.exit_code in (0, 2), (shown, result.output, result.exception)
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert result.output.startswith("error: "), result.output
    return result


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


@dataclass(frozen=True)
class Verdict:
    """What `dubrunner validate` says of one hostile document."""

    content: bytes | Sparse
    code: int  # the exit code: 0 accepted, 2 refused
    says: str  # a phrase of the message (for a refusal, of the error naming `line`)
    line: int | None = None  # the line the error names; None: the file as a whole


BILLION_LAUGHS = (
    b"x-a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']\n"
    + b"".join(
        f"x-{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n".encode()
        for i in range(8)
    )
    + b"jobs: *i\n"
)

# Every kind of document the fuzzers above produce, and the attacks they stand for, with the
# verdict pinned: which are refused, and with what words, is part of the contract.
HOSTILE: dict[str, Verdict] = {
    # Aliases: shared, never expanded, so a bomb costs nothing, and it is still no job list.
    "billion_laughs": Verdict(
        BILLION_LAUGHS, 2, "jobs must be a list written in place, not an alias", 10
    ),
    "alias_bomb_in_a_job": Verdict(
        b"x-1: &x [1, 2]\nx-2: &y [*x, *x, *x, *x, *x, *x, *x, *x]\n"
        b"x-3: &z [*y, *y, *y, *y, *y, *y, *y, *y]\njobs:\n  - {video: *z, audio: *z}\n",
        2,
        "job 1: video must be a URL or a file path, not a list",
        5,
    ),
    "alias_to_itself": Verdict(b"x-a: &a [*a]\njobs: []\n", 2, "unknown alias *a", 1),
    "unknown_alias": Verdict(b"jobs:\n  - video: *a\n", 2, "unknown alias *a", 2),
    "merge_keys": Verdict(  # a job completed from an anchor: allowed
        b"x-base: &b {video: 'https://x/v'}\njobs:\n  - <<: *b\n    audio: 'https://x/a'\n",
        0,
        "ok — batch fuzz, 1 jobs",
    ),
    # Tags that would build objects (or run code) are refused where they stand.
    "python_object": Verdict(
        b"jobs: !!python/object/apply:os.system ['echo pwned']\n",
        2,
        "the tag tag:yaml.org,2002:python/object/apply:os.system is not allowed in a manifest",
        1,
    ),
    "python_name": Verdict(
        b"jobs:\n  - video: !!python/name:os.system\n    audio: https://x/a\n",
        2,
        "the tag tag:yaml.org,2002:python/name:os.system is not allowed in a manifest",
        2,
    ),
    "custom_tag": Verdict(
        b"jobs:\n  - !job {video: 'https://x/v', audio: 'https://x/a'}\n",
        2,
        "the tag !job is not allowed in a manifest",
        2,
    ),
    "set_tag": Verdict(
        b"jobs: !!set {a, b}\n", 2, "the tag tag:yaml.org,2002:set is not allowed", 1
    ),
    "binary_tag": Verdict(
        b"jobs:\n  - video: !!binary aGVsbG8=\n    audio: https://x/a\n",
        2,
        "the tag tag:yaml.org,2002:binary is not allowed",
        2,
    ),
    "implicit_timestamp": Verdict(  # read as text, not built as a date
        b"jobs:\n  - video: 2001-12-14\n    audio: https://x/a\n",
        2,
        "job 1: video '2001-12-14' is a local file and audio a URL",
        2,
    ),
    # Depth: libyaml's own limit for flow collections, dubrunner's (50) for block ones.
    "deep_nesting": Verdict(
        b"jobs: " + b"[" * 5000 + b"]" * 5000 + b"\n", 2, "exceeded maximum nesting depth", 1
    ),
    "deep_mappings": Verdict(
        b"jobs:\n" + b"".join(b"  " * i + b"- a:\n" for i in range(400)),
        2,
        "the YAML is nested more than 50 levels deep",
        26,
    ),
    # Size.
    "huge_string": Verdict(
        b"jobs:\n  - video: 'https://x/" + b"a" * 5_000_000 + b"'\n    audio: 'https://x/a'\n",
        2,
        "job 1: video is longer than 8192 characters",
        2,
    ),
    # One byte over the documented 64 MiB, all NUL: refused before a byte is read (reading it
    # would have said "NUL byte").
    "over_the_size_limit": Verdict(
        Sparse(64 * 1024 * 1024 + 1), 2, "the file is 67,108,865 bytes; the limit is 67,108,864"
    ),
    # Bytes that are not a YAML text.
    "random_bytes": Verdict(bytes(range(256)), 2, "not UTF-8 text (byte 0x80)", 2),
    "not_utf8": Verdict(
        b"jobs:\n  - video: 'https://x/\xff'\n", 2, "not UTF-8 text (byte 0xff)", 2
    ),
    "utf16": Verdict("jobs: []\n".encode("utf-16"), 2, "not UTF-8 text (byte 0xff)", 1),
    "nul_bytes": Verdict(
        b"jobs:\n  - video: 'https://x/\x00'\n", 2, "contains a NUL byte: not a text file", 2
    ),
    # The reader's error names no line here (it gives a position in "<unicode string>"); pinned
    # as it is.
    "control_characters": Verdict(b"jobs: \x07\n", 2, "control characters are not allowed"),
    "unclosed_flow": Verdict(b"jobs: {\n", 2, "YAML syntax error", 2),
    "tab_indentation": Verdict(b"jobs:\n\t- video: x\n", 2, "YAML syntax error", 2),
    # Documents of the wrong shape.
    "empty_file": Verdict(b"", 2, "the manifest is empty"),
    "null_document": Verdict(b"~\n", 2, "the manifest is empty"),
    "many_documents": Verdict(
        b"jobs: []\n---\njobs: []\n", 2, "a manifest is one YAML document; found another", 2
    ),
    "top_level_list": Verdict(
        b"- jobs: []\n", 2, "the top level must be a mapping with 'jobs:', not a list", 1
    ),
    "top_level_number": Verdict(
        b"42\n", 2, "the top level must be a mapping with 'jobs:', not a number", 1
    ),
    "top_level_text": Verdict(
        b"hello\n", 2, "the top level must be a mapping with 'jobs:', not text", 1
    ),
    "jobs_not_a_list": Verdict(b"jobs: .nan\n", 2, "jobs must be a list", 1),
    "unknown_top_level_key": Verdict(b"jobz: []\n", 2, "unknown top-level key 'jobz'", 1),
    "key_not_a_plain_value": Verdict(
        b"? [a, b]\n: 1\njobs: []\n", 2, "a mapping key must be a plain value", 1
    ),
    "duplicate_keys": Verdict(b"jobs: []\njobs: []\n", 2, "duplicate key 'jobs'", 2),
    "duplicate_key_in_a_job": Verdict(
        b"jobs:\n  - {video: 'https://x/v', audio: 'https://x/a', video: 'https://x/w'}\n",
        2,
        "duplicate key 'video'",
        2,
    ),
    # And the document every mutation starts from, to show that the cases above are refused for
    # what they add.
    "valid": Verdict(VALID, 0, "ok — batch fz, 2 jobs"),
    "valid_with_a_bom": Verdict(b"\xef\xbb\xbf" + VALID, 0, "ok — batch fz, 2 jobs"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_documents(tmp_path: Path, name: str) -> None:
    verdict = HOSTILE[name]
    result = validate(tmp_path, verdict.content)
    assert result.exit_code == verdict.code, result.output
    if verdict.code == 0:
        assert result.output == f"{tmp_path / 'fuzz.yaml'}: {verdict.says}\n", result.output
        return
    where = f"{tmp_path / 'fuzz.yaml'}" + (f":{verdict.line}" if verdict.line else "")
    errors = result.output.splitlines()
    assert any(e.startswith(f"error: {where}: ") and verdict.says in e for e in errors), errors
    assert errors[-1].endswith("; nothing was loaded"), errors
