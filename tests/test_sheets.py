"""CSV and JSONL manifests: the same checks as YAML's (each malformed kind refused with file:line,
exit 2, nothing written), the same jobs from the same entries, --batch, local files."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dubrunner.cli import cli
from dubrunner.manifest import ManifestError, load
from tests.conftest import db_rows

V, A = "https://a.test/v.mp4", "https://a.test/a.wav"

# kind -> format -> (file content, text the error must contain, the line it must name or None).
# Every kind is written in each format: the one set of rules, three readers.
KINDS: dict[str, dict[str, tuple[bytes, str, int | None]]] = {
    "empty_file": {
        "yaml": (b"", "the manifest is empty", None),
        "csv": (b"", "the manifest is empty", None),
        "jsonl": (b"\n\n", "the manifest is empty", None),
    },
    "no_jobs": {
        "yaml": (b"jobs: []\n", "the jobs list is empty", 1),
        "csv": (b"video,audio\n\n", "no rows under the header", 1),
        "jsonl": (b"  \n", "the manifest is empty", None),
    },
    "syntax": {
        "yaml": (b"jobs:\n  - video: [unclosed\n", "YAML syntax error", 3),
        "csv": (f'video,audio\n{V},{A}\n{V},"{A}\n'.encode(), "CSV syntax error", 3),
        "jsonl": (
            f'{{"video": "{V}", "audio": "{A}"}}\n{{"video": \n'.encode(),
            "not valid JSON",
            2,
        ),
    },
    "not_utf8": {
        "yaml": (b"jobs:\n  - video: 'https://a.test/\xff'\n", "not UTF-8 text", 2),
        "csv": (b"video,audio\nhttps://a.test/\xff,x\n", "not UTF-8 text", 2),
        "jsonl": (b'{"video": "https://a.test/\xff"}\n', "not UTF-8 text", 1),
    },
    "nul_byte": {
        "yaml": (b"jobs:\n  - video: a\x00\n", "NUL byte", 2),
        "csv": (b"video,audio\na\x00,b\n", "NUL byte", 2),
        "jsonl": (b'\n{"video": "a\x00"}\n', "NUL byte", 2),
    },
    "job_not_an_entry": {
        "yaml": (b"jobs:\n  - 42\n", "job 1: must be a mapping", 2),
        "csv": (f"video,audio\n{V},{A},extra\n".encode(), "job 1: 3 cells, but the header", 2),
        "jsonl": (b"[1, 2]\n", "job 1: must be a mapping", 1),
    },
    "no_video": {
        "yaml": (f"jobs:\n  - {{audio: '{A}'}}\n".encode(), "job 1: no video", 2),
        "csv": (f"video,audio\n,{A}\n".encode(), "job 1: no video", 2),
        "jsonl": (f'{{"audio": "{A}"}}\n'.encode(), "job 1: no video", 1),
    },
    "no_audio": {
        "yaml": (f"jobs:\n  - {{video: '{V}'}}\n".encode(), "job 1: no audio", 2),
        "csv": (f"video,audio\n{V}\n".encode(), "job 1: no audio", 2),
        "jsonl": (f'{{"video": "{V}"}}\n'.encode(), "job 1: no audio", 1),
    },
    "ftp_url": {
        "yaml": (
            f"jobs:\n  - video: '{V}'\n    audio: 'ftp://a.test/a.wav'\n".encode(),
            "audio must be an absolute http(s) URL",
            3,
        ),
        "csv": (
            f"video,audio\n{V},ftp://a.test/a.wav\n".encode(),
            "audio must be an absolute http(s) URL",
            2,
        ),
        "jsonl": (
            f'{{"video": "{V}", "audio": "ftp://a.test/a.wav"}}\n'.encode(),
            "audio must be an absolute http(s) URL",
            1,
        ),
    },
    "one_local_one_url": {
        "yaml": (
            f"jobs:\n  - video: /media/v.mp4\n    audio: '{A}'\n".encode(),
            "video '/media/v.mp4' is a local file and audio a URL",
            2,
        ),
        "csv": (
            f"video,audio\n/media/v.mp4,{A}\n".encode(),
            "video '/media/v.mp4' is a local file and audio a URL",
            2,
        ),
        "jsonl": (
            f'{{"video": "/media/v.mp4", "audio": "{A}"}}\n'.encode(),
            "video '/media/v.mp4' is a local file and audio a URL",
            1,
        ),
    },
    "flag_not_bool": {
        "yaml": (
            f"jobs:\n  - video: '{V}'\n    audio: '{A}'\n"
            "    disable_active_speaker_detection: maybe\n".encode(),
            "disable_active_speaker_detection must be true or false",
            4,
        ),
        "csv": (
            f"video,audio,disable_active_speaker_detection\n{V},{A},maybe\n".encode(),
            "disable_active_speaker_detection must be true or false",
            2,
        ),
        "jsonl": (
            f'{{"video": "{V}", "audio": "{A}", "disable_active_speaker_detection": "yes"}}\n'
            "".encode(),
            "disable_active_speaker_detection must be true or false",
            1,
        ),
    },
    "bad_reference_id": {
        "yaml": (
            f"jobs:\n  - {{video: '{V}', audio: '{A}', reference_id: 'a b'}}\n".encode(),
            "reference_id must be text of letters",
            2,
        ),
        "csv": (
            f"video,audio,reference_id\n{V},{A},a b\n".encode(),
            "reference_id must be text of letters",
            2,
        ),
        "jsonl": (
            f'{{"video": "{V}", "audio": "{A}", "reference_id": "a b"}}\n'.encode(),
            "reference_id must be text of letters",
            1,
        ),
    },
    "duplicate_reference_id": {
        "yaml": (
            b"jobs:\n  - {reference_id: ep1, video: 'https://a.test/1', audio: 'https://a.test/a'}\n"
            b"  - {reference_id: ep1, video: 'https://a.test/2', audio: 'https://a.test/b'}\n",
            "reference_id 'ep1' is already used by the job at line 2",
            3,
        ),
        "csv": (
            b"reference_id,video,audio\nep1,https://a.test/1,https://a.test/a\n"
            b"ep1,https://a.test/2,https://a.test/b\n",
            "reference_id 'ep1' is already used by the job at line 2",
            3,
        ),
        "jsonl": (
            b'{"reference_id": "ep1", "video": "https://a.test/1", "audio": "https://a.test/a"}\n'
            b'{"reference_id": "ep1", "video": "https://a.test/2", "audio": "https://a.test/b"}\n',
            "reference_id 'ep1' is already used by the job at line 1",
            2,
        ),
    },
    "misspelt_key": {
        "yaml": (
            f"jobs:\n  - {{vidoe: '{V}', audio: '{A}'}}\n".encode(),
            "did you mean 'video'",
            2,
        ),
        "csv": (f"vidoe,audio\n{V},{A}\n".encode(), "did you mean 'video'", 1),
        "jsonl": (f'{{"vidoe": "{V}", "audio": "{A}"}}\n'.encode(), "did you mean 'video'", 1),
    },
    "duplicate_key": {
        "yaml": (f"jobs:\n  - {{video: '{V}', video: '{V}'}}\n".encode(), "duplicate key", 2),
        "csv": (f"video,audio,video\n{V},{A},{V}\n".encode(), "is given twice", 1),
        "jsonl": (f'{{"video": "{V}", "video": "{V}"}}\n'.encode(), "is given twice", 1),
    },
    "batch": {
        "yaml": (
            f"batch: 'a b/c'\njobs:\n  - {{video: '{V}', audio: '{A}'}}\n".encode(),
            "batch must be",
            1,
        ),
        "csv": (f"batch,video,audio\nx,{V},{A}\n".encode(), "no batch column", 1),
        "jsonl": (
            f'{{"batch": "x", "video": "{V}", "audio": "{A}"}}\n'.encode(),
            "no batch key",
            1,
        ),
    },
    # Characters no URL or file name can mean: the request would be paid for nothing (and a
    # lone surrogate could not even be stored).
    "control_character": {
        "yaml": (
            f"jobs:\n  - {{video: \"{V}\\0x\", audio: '{A}'}}\n".encode(),
            "video contains a control character (U+0000)",
            2,
        ),
        "csv": (
            f"video,audio\n{V},{A}\x7f\n".encode(),
            "audio contains a control character (U+007F)",
            2,
        ),
        "jsonl": (
            f'{{"video": "{V}\\u0000", "audio": "{A}"}}\n'.encode(),
            "video contains a control character (U+0000)",
            1,
        ),
    },
    "format_character": {
        "yaml": (
            f"jobs:\n  - {{video: '{V}\u202e4pm.exe', audio: '{A}'}}\n".encode(),
            "video contains an invisible formatting character (U+202E)",
            2,
        ),
        "csv": (
            f"video,audio\n{V},{A}\u200b\n".encode(),
            "audio contains an invisible formatting character (U+200B)",
            2,
        ),
        "jsonl": (
            f'{{"video": "{V}", "audio": "{A}\\u2066"}}\n'.encode(),
            "audio contains an invisible formatting character (U+2066)",
            1,
        ),
    },
    "surrogate_or_control_in_local_path": {
        "yaml": (
            b'jobs:\n  - {video: "v\\x01.mp4", audio: a.wav}\n',
            "video contains a control character (U+0001)",
            2,
        ),
        "csv": (
            b"video,audio\nv.mp4,a\x1b.wav\n",
            "audio contains a control character (U+001B)",
            2,
        ),
        "jsonl": (
            b'{"video": "v\\ud800.mp4", "audio": "a.wav"}\n',
            "video contains a lone surrogate (U+D800)",
            1,
        ),
    },
    "surrogate": {
        # YAML and UTF-8 CSV cannot hold one: their nearest, a control character.
        "yaml": (
            f'jobs:\n  - {{video: "{V}", audio: "{A}\\x9b"}}\n'.encode(),
            "audio contains a control character (U+009B)",
            2,
        ),
        "csv": (
            f"reference_id,video,audio\nep\x00,{V},{A}\n".encode(),
            "contains a NUL byte",
            2,
        ),
        "jsonl": (
            f'{{"video": "{V}", "audio": "{A}\\udc80", "reference_id": "e\\ud800"}}\n'.encode(),
            "audio contains a lone surrogate (U+DC80)",
            1,
        ),
    },
    "not_in_url": {
        "yaml": (
            f"jobs:\n  - {{video: '{V}#<a>', audio: '{A}'}}\n".encode(),
            "video contains '<', which a URL cannot hold unescaped",
            2,
        ),
        "csv": (
            f'video,audio\n{V},"{A}"""\n'.encode(),
            "audio contains '\"', which a URL cannot hold unescaped",
            2,
        ),
        "jsonl": (
            f'{{"video": "{V}?q=<b>", "audio": "{A}"}}\n'.encode(),
            "video contains '<', which a URL cannot hold unescaped",
            1,
        ),
    },
    "reference_id_control_character": {
        "yaml": (
            f'jobs:\n  - {{video: "{V}", audio: "{A}", reference_id: "ep\\u202e1"}}\n'.encode(),
            "reference_id must be text of letters",
            2,
        ),
        "csv": (
            f"video,audio,reference_id\n{V},{A},ep\x7f1\n".encode(),
            "reference_id must be text of letters",
            2,
        ),
        "jsonl": (
            f'{{"video": "{V}", "audio": "{A}", "reference_id": "ep\\ud8001"}}\n'.encode(),
            "reference_id must be text of letters",
            1,
        ),
    },
    "huge_number": {  # not "use sys.set_int_max_str_digits()": a programmer's words
        "yaml": (
            f"jobs:\n  - {{video: '{V}', audio: '{A}', reference_id: {'9' * 5000}}}\n".encode(),
            "is not a valid int",
            2,
        ),
        "csv": (
            f"video,audio,reference_id\n{V},{A},{'9' * 5000}\n".encode(),
            "reference_id is longer than 200 characters",
            2,
        ),
        "jsonl": (
            f'{{"video": "{V}", "audio": "{A}", "reference_id": {"9" * 5000}}}\n'.encode(),
            "job 1: a number of 5,000 digits: too long to be a value",
            1,
        ),
    },
}
MALFORMED = [
    (kind, fmt, *case) for kind, by_format in KINDS.items() for fmt, case in by_format.items()
]


@pytest.mark.parametrize(
    ("kind", "fmt", "content", "expected", "line"),
    MALFORMED,
    ids=[f"{kind}-{fmt}" for kind, fmt, *_ in MALFORMED],
)
def test_each_malformed_kind_exits_2_names_file_line_and_writes_nothing(
    tmp_path: Path, kind: str, fmt: str, content: bytes, expected: str, line: int | None
) -> None:
    path = tmp_path / f"{kind}.{fmt}"
    path.write_bytes(content)
    db = tmp_path / "jobs.db"
    runner = CliRunner()
    for command in (
        ["validate", str(path)],
        ["load", str(path), "--db", str(db)],
        ["submit", str(path), "--db", str(db)],
    ):
        result = runner.invoke(cli, command, env={"CHAMELAION_API_KEY": "k-123456"})
        assert result.exit_code == 2, (command, result.output)
        assert expected in result.output, result.output
        if line is not None:
            assert f"{path}:{line}:" in result.output, result.output
        assert "Traceback" not in result.output
        assert "nothing was loaded" in result.output
    assert not db.exists() or db_rows(db, "SELECT count(*) FROM jobs") == [(0,)]


def test_every_format_is_checked_the_same_number_of_ways() -> None:
    assert all(set(by_format) == {"yaml", "csv", "jsonl"} for by_format in KINDS.values())


def test_csv_and_jsonl_give_the_jobs_yaml_gives(tmp_path: Path) -> None:
    """The same entries in the three formats, in one batch, are the same jobs: the same derived
    reference_ids, flags and URLs (so loading one after another changes nothing)."""
    (tmp_path / "s.yaml").write_text(
        "jobs:\n"
        "  - {video: 'https://a.test/v1', audio: 'https://a.test/a1'}\n"
        "  - {video: 'https://a.test/v2', audio: 'https://a.test/a2', reference_id: ep2,\n"
        "     disable_active_speaker_detection: true}\n"
        "  - {video: 'https://a.test/v3', audio: 'https://a.test/a3',"
        " disable_active_speaker_detection: false}\n"
    )
    # A BOM, a note column, blank rows, the flag's spellings, a quoted cell over two lines.
    (tmp_path / "s.csv").write_bytes(
        "\ufeffvideo , audio,reference_id,disable_active_speaker_detection,x-note\n"
        "https://a.test/v1,https://a.test/a1,,,first\n"
        "\n"
        ",,,,\n"
        'https://a.test/v2,https://a.test/a2,ep2,Yes,"two\nlines"\n'
        "https://a.test/v3,https://a.test/a3,,0\n".encode()
    )
    (tmp_path / "s.jsonl").write_text(
        '{"video": "https://a.test/v1", "audio": "https://a.test/a1", "x-note": 1}\n'
        "\n"
        '{"inputs": [{"type": "audio", "url": "https://a.test/a2"},'
        ' {"type": "video", "url": "https://a.test/v2"}], "reference_id": "ep2",'
        ' "disable_active_speaker_detection": true}\n'
        '{"video": "https://a.test/v3", "audio": "https://a.test/a3",'
        ' "disable_active_speaker_detection": null}\n'
    )
    loaded = {fmt: load(tmp_path / f"s.{fmt}") for fmt in ("yaml", "csv", "jsonl")}
    assert {m.batch for m in loaded.values()} == {"s"}
    shapes = {
        fmt: [
            (j.reference_id, j.video_url, j.audio_url, j.disable_active_speaker_detection)
            for j in m.jobs
        ]
        for fmt, m in loaded.items()
    }
    assert shapes["csv"] == shapes["yaml"] == shapes["jsonl"]
    assert shapes["yaml"][1][0] == "ep2" and shapes["yaml"][1][3] is True
    assert [j.line for j in loaded["csv"].jobs] == [2, 5, 6]  # rows: one spans 2 lines
    assert [j.line for j in loaded["jsonl"].jobs] == [1, 3, 4]

    db = tmp_path / "jobs.db"
    runner = CliRunner()
    first = runner.invoke(cli, ["load", str(tmp_path / "s.yaml"), "--db", str(db)])
    assert first.exit_code == 0, first.output
    for fmt in ("csv", "jsonl"):
        again = runner.invoke(cli, ["load", str(tmp_path / f"s.{fmt}"), "--db", str(db)])
        assert again.exit_code == 0, again.output
        assert "3 unchanged" in again.output, again.output
    assert db_rows(db, "SELECT count(*) FROM jobs") == [(3,)]


def test_every_bad_row_is_reported_in_one_run(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "video,audio\n"
        "ftp://a,https://a.test/a\n"
        "https://a.test/v1,https://a.test/a1\n"
        "https://a.test/v2\n"
        ",https://a.test/a\n"
    )
    with pytest.raises(ManifestError) as info:
        load(path)
    lines = info.value.lines()
    assert [line.split(": job")[0] for line in lines] == [f"{path}:2", f"{path}:4", f"{path}:5"]
    assert lines[2].endswith("no video (the video cell is empty)")


def test_the_batch_comes_from_the_option_else_the_file_name(tmp_path: Path) -> None:
    csv_path = tmp_path / "Season 1 (JA).csv"
    csv_path.write_text(f"video,audio\n{V},{A}\n")
    assert load(csv_path).batch == "Season-1-JA"
    assert load(csv_path, batch="s1-ja").batch == "s1-ja"
    yaml_path = tmp_path / "s.yaml"
    yaml_path.write_text(f"batch: s1-ja\njobs:\n  - {{video: '{V}', audio: '{A}'}}\n")
    assert load(yaml_path, batch="s1-ja").batch == "s1-ja"  # the same: fine
    with pytest.raises(ManifestError) as info:
        load(yaml_path, batch="other")  # differ: which one the derived ids follow is unclear
    assert info.value.lines() == [
        f"{yaml_path}:1: batch 's1-ja' differs from --batch 'other'; the batch is part of every "
        "derived reference_id: give one of them, or the same"
    ]
    runner = CliRunner()
    bad = runner.invoke(cli, ["validate", str(csv_path), "--batch", "a b"])
    assert bad.exit_code == 2 and "--batch must be 1-100 letters" in bad.output
    ok = runner.invoke(cli, ["validate", str(csv_path), "--batch", "s1-ja"])
    assert ok.exit_code == 0 and "batch s1-ja, 1 jobs" in ok.output


def test_local_files_in_a_csv_are_relative_to_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    media = tmp_path / "season" / "media"
    media.mkdir(parents=True)
    (media / "e1.mp4").write_bytes(b"video-1")
    (media / "e1-ja.wav").write_bytes(b"audio-1")
    path = tmp_path / "season" / "s.csv"
    path.write_text("video,audio\nmedia/e1.mp4,media/e1-ja.wav\nmedia/e2.mp4,media/e2-ja.wav\n")
    monkeypatch.chdir(tmp_path)  # elsewhere: the paths are the manifest's, not the cwd's
    with pytest.raises(ManifestError) as info:
        load(path)
    assert [p.line for p in info.value.problems] == [3, 3]
    assert "e2.mp4" in info.value.problems[0].text
    path.write_text("video,audio\nmedia/e1.mp4,media/e1-ja.wav\n")
    (job,) = load(path).jobs
    assert job.is_local and job.video_url == (media / "e1.mp4").as_uri()
    assert job.video_size == len(b"video-1")


def test_the_job_limit_holds_for_rows(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("".join(f'{{"video": "{V}?{i}", "audio": "{A}"}}\n' for i in range(20)))
    many = CliRunner().invoke(cli, ["validate", str(path), "--max-jobs", "10"])
    assert many.exit_code == 2 and f"{path}:11: more than 10 jobs" in many.output


def test_a_csv_without_its_header_says_so(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(f"{V},{A}\n")
    with pytest.raises(ManifestError) as info:
        load(path)
    assert info.value.lines()[0].startswith(f"{path}:1: the first row must be the header")


def test_bundled_spreadsheet_manifests_are_valid_and_agree() -> None:
    root = Path(__file__).resolve().parent.parent / "manifests"
    csv_jobs, jsonl_jobs = (load(root / f"sheet-example.{k}").jobs for k in ("csv", "jsonl"))
    assert len(csv_jobs) == 3 and csv_jobs == [
        dataclasses.replace(j, line=c.line) for j, c in zip(jsonl_jobs, csv_jobs, strict=True)
    ]
    assert [j.disable_active_speaker_detection for j in csv_jobs] == [False, True, False]


# -- hostile spreadsheets: whatever the bytes, exit 0 or a clean exit 2 ----------

FUZZ = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def validate_held(tmp_path: Path, name: str, content: bytes) -> Result:
    path = tmp_path / name
    path.write_bytes(content)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code in (0, 2), (content[:200], result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    if result.exit_code == 2:
        assert result.output.startswith("error: "), result.output
    return result


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from(["m.csv", "m.jsonl"]))
def test_random_bytes(tmp_path: Path, content: bytes, name: str) -> None:
    validate_held(tmp_path, name, content)


cells = st.one_of(
    st.text(max_size=20),
    st.sampled_from([V, A, "video", "audio", "yes", "x-n", "batch", "", '"', "\n", "media/v.mp4"]),
)


@FUZZ
@given(st.lists(st.lists(cells, max_size=6), max_size=6))
def test_arbitrary_csv_tables(tmp_path: Path, rows: list[list[str]]) -> None:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    validate_held(tmp_path, "m.csv", out.getvalue().encode("utf-8", "surrogatepass"))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), cells),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["video", "audio", "inputs", "type", "url", "reference_id", "batch"])
            | st.text(max_size=6),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=20,
)


@FUZZ
@given(st.lists(json_values, max_size=5))
def test_arbitrary_json_lines(tmp_path: Path, lines: list[object]) -> None:
    text = "".join(json.dumps(line) + "\n" for line in lines)
    validate_held(tmp_path, "m.jsonl", text.encode("utf-8", "surrogatepass"))


def test_a_csv_with_lone_carriage_returns_is_told_in_the_users_terms(tmp_path: Path) -> None:
    path = tmp_path / "mac.csv"
    path.write_bytes(f"video,audio\r{V},{A}\r".encode())
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[0] == (
        f"error: {path}:1: CSV syntax error: a line ends in a lone carriage return (CR, as in "
        "old Mac files); save the file with LF or CRLF line endings"
    )


@pytest.mark.parametrize("fmt", ["yaml", "csv", "jsonl"])
def test_a_manifest_whose_name_is_not_utf8_is_refused_before_the_db(
    tmp_path: Path, fmt: str
) -> None:
    content = {
        "yaml": f"jobs:\n  - {{video: '{V}', audio: '{A}'}}\n",
        "csv": f"video,audio\n{V},{A}\n",
        "jsonl": f'{{"video": "{V}", "audio": "{A}"}}\n',
    }[fmt]
    try:
        path = tmp_path / os.fsdecode(f"m\xff.{fmt}".encode("latin-1"))
        path.write_text(content, encoding="utf-8")
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    db = tmp_path / "jobs.db"
    for command in (["validate"], ["load", "--db", str(db)], ["submit", "--db", str(db)]):
        result = CliRunner().invoke(
            cli, [*command, str(path), "--batch", "b"], env={"CHAMELAION_API_KEY": "k-123456"}
        )
        assert result.exit_code == 2, (command, result.output)
        shown = str(tmp_path / f"m\\xff.{fmt}")
        assert result.output.splitlines() == [
            f"error: {shown}: the file's name is not valid UTF-8: rename the file",
            f"error: 1 problem in {shown}; nothing was loaded",
        ], result.output
    assert not db.exists() or db_rows(db, "SELECT count(*) FROM jobs") == [(0,)]
