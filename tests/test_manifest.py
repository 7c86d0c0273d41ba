"""Manifests: what loads, and every malformed kind refused with file:line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dubrunner.cli import cli
from dubrunner.manifest import ManifestError, derive_reference_id, load, parse
from tests.conftest import db_rows, run_cli, write_manifest

GOOD_JOB = "  - {video: 'https://cdn.test/v.mp4', audio: 'https://cdn.test/a.wav'}\n"

# (name, manifest bytes, text the error must contain, the line it must name or None)
MALFORMED: list[tuple[str, bytes, str, int | None]] = [
    ("yaml_syntax", b"jobs:\n  - video: [unclosed\n", "YAML syntax error", 3),
    ("empty_file", b"", "the manifest is empty", None),
    ("only_comments", b"# nothing\n", "the manifest is empty", None),
    ("top_level_list", b"- video: x\n", "top level must be a mapping", 1),
    ("jobs_not_list", b"jobs: 3\n", "jobs must be a list", 1),
    ("jobs_empty", b"jobs: []\n", "the jobs list is empty", 1),
    ("no_jobs_key", b"batch: x\n", "no 'jobs:' list", 1),
    ("job_not_mapping", b"jobs:\n  - 42\n", "job 1: must be a mapping", 2),
    ("no_video", b"jobs:\n  - {audio: 'https://a.test/a.wav'}\n", "job 1: no video", 2),
    ("no_audio", b"jobs:\n  - {video: 'https://a.test/v.mp4'}\n", "job 1: no audio", 2),
    (
        "two_videos",
        b"jobs:\n  - inputs:\n      - {type: video, url: 'https://a.test/1'}\n"
        b"      - {type: video, url: 'https://a.test/2'}\n"
        b"      - {type: audio, url: 'https://a.test/3'}\n",
        "expected exactly one video input, found 2",
        3,
    ),
    (
        "two_audios",
        b"jobs:\n  - inputs:\n      - {type: video, url: 'https://a.test/1'}\n"
        b"      - {type: audio, url: 'https://a.test/2'}\n"
        b"      - {type: audio, url: 'https://a.test/3'}\n",
        "expected exactly one audio input, found 2",
        3,
    ),
    (
        "no_audio_input",
        b"jobs:\n  - inputs:\n      - {type: video, url: 'https://a.test/1'}\n",
        "expected exactly one audio input, found 0",
        3,
    ),
    (
        "bad_input_type",
        b"jobs:\n  - inputs:\n      - {type: video, url: 'https://a.test/1'}\n"
        b"      - {type: subtitles, url: 'https://a.test/2'}\n",
        'input type must be "video" or "audio"',
        4,
    ),
    (
        "relative_url",
        b"jobs:\n  - video: /media/v.mp4\n    audio: 'https://a.test/a.wav'\n",
        "video '/media/v.mp4' is a local file and audio a URL",
        2,
    ),
    (
        "ftp_url",
        b"jobs:\n  - video: 'https://a.test/v.mp4'\n    audio: 'ftp://a.test/a.wav'\n",
        "audio must be an absolute http(s) URL",
        3,
    ),
    (
        "url_not_string",
        b"jobs:\n  - video: 12\n    audio: 'https://a.test/a.wav'\n",
        "video must be a URL or a file path, not a number",
        2,
    ),
    (
        "flag_not_bool",
        b"jobs:\n  - video: 'https://a.test/v'\n    audio: 'https://a.test/a'\n"
        b"    disable_active_speaker_detection: maybe\n",
        "disable_active_speaker_detection must be true or false",
        4,
    ),
    (
        "duplicate_reference_id",
        b"jobs:\n  - {reference_id: ep1, video: 'https://a.test/1', audio: 'https://a.test/a'}\n"
        b"  - {reference_id: ep1, video: 'https://a.test/2', audio: 'https://a.test/b'}\n",
        "reference_id 'ep1' is already used by the job at line 2",
        3,
    ),
    ("unknown_key", b"jobs:\n" + GOOD_JOB.encode() + b"  - {vidoe: x}\n", "unknown key 'vidoe'", 3),
    ("duplicate_key", b"jobs: []\njobs: []\n", "duplicate key 'jobs'", 2),
    ("not_utf8", b"jobs:\n  - video: 'https://a.test/\xff'\n", "not UTF-8 text", 2),
    ("python_tag", b"jobs: !!python/object/apply:os.system ['true']\n", "is not allowed", 1),
    ("bad_batch", b"batch: 'a b/c'\njobs:\n" + GOOD_JOB.encode(), "batch must be", 1),
]


@pytest.mark.parametrize(
    ("name", "content", "expected", "line"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_manifest_exits_2_and_writes_nothing(
    tmp_path: Path, name: str, content: bytes, expected: str, line: int | None
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content)
    db = tmp_path / "jobs.db"
    runner = CliRunner()
    for command in (["validate", str(path)], ["submit", str(path), "--db", str(db)]):
        result = runner.invoke(cli, command, env={"CHAMELAION_API_KEY": "k-123456"})
        assert result.exit_code == 2, (command, result.output)
        assert expected in result.output, result.output
        if line is not None:
            assert f"{path}:{line}:" in result.output, result.output
        assert "Traceback" not in result.output
        assert "nothing was loaded" in result.output
    assert not db.exists() or db_rows(db, "SELECT count(*) FROM jobs") == [(0,)]


def test_every_bad_job_is_reported_in_one_run(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "jobs:\n"
        "  - {video: 'ftp://a', audio: 'https://a.test/a'}\n"
        + GOOD_JOB
        + "  - {video: 'https://a.test/v'}\n"
        "  - {audio: 'https://a.test/a', video: 'https://a.test/v', extra: 1}\n"
    )
    with pytest.raises(ManifestError) as info:
        load(path)
    lines = info.value.lines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{path}:2: job 1:")
    assert lines[1].startswith(f"{path}:4: job 3:")
    assert lines[2].startswith(f"{path}:5: job 4:")


@pytest.mark.slow
def test_malformed_manifest_as_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("jobs:\n  - {video: 'https://a.test/v'}\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "CHAMELAION_API_KEY": "k-123456",
        "DUBRUNNER_DB": str(tmp_path / "j.db"),
    }
    r = run_cli(["submit", str(path)], env)
    assert r.code == 2
    assert (
        r.err.splitlines()[0] == f"error: {path}:2: job 1: no audio (give audio: URL, or inputs:)"
    )
    assert "Traceback" not in r.err
    assert not (tmp_path / "j.db").exists()
    missing = run_cli(["validate", str(tmp_path / "nope.yaml")], env)
    assert missing.code == 2 and "no such file" in missing.err


def test_size_and_job_limits_refuse_up_front(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "m.yaml", 20)
    runner = CliRunner()
    big = runner.invoke(cli, ["validate", str(path), "--max-manifest-bytes", "100"])
    assert big.exit_code == 2 and "the limit is 100" in big.output
    many = runner.invoke(cli, ["validate", str(path), "--max-jobs", "10"])
    assert many.exit_code == 2 and "more than 10 jobs; the limit is 10" in many.output


def test_both_shapes_defaults_and_derived_reference_ids() -> None:
    m = parse(
        "defaults: {disable_active_speaker_detection: true}\n"
        "jobs:\n"
        "  - {video: 'https://a.test/v1', audio: 'https://a.test/a1'}\n"
        "  - inputs: [{type: audio, url: 'https://a.test/a2'}, {type: video, url: 'https://a.test/v2'}]\n"
        "    reference_id: ep2\n"
        "    disable_active_speaker_detection: false\n"
        "  - {video: 'https://a.test/v3', audio: 'https://a.test/a3', reference_id: 3}\n",
        "s.yaml",
        "season-2",
    )
    assert m.batch == "season-2"
    first, second, third = m.jobs
    assert first.reference_id == derive_reference_id(
        "season-2", "https://a.test/v1", "https://a.test/a1"
    )
    assert first.disable_active_speaker_detection is True and first.line == 3
    assert (second.video_url, second.audio_url, second.reference_id) == (
        "https://a.test/v2",
        "https://a.test/a2",
        "ep2",
    )
    assert second.disable_active_speaker_detection is False
    assert third.reference_id == "3"
    # Derived ids are stable: the same file loads to the same ids.
    again = parse(
        "jobs:\n  - {video: 'https://a.test/v1', audio: 'https://a.test/a1'}\n", "x", "season-2"
    )
    assert again.jobs[0].reference_id == first.reference_id


def test_batch_defaults_to_the_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "Season 1 (JA).yaml"
    path.write_text("jobs:\n" + GOOD_JOB)
    assert load(path).batch == "Season-1-JA"


def test_bundled_manifests_are_valid() -> None:
    root = Path(__file__).resolve().parent.parent / "manifests"
    example = load(root / "example.yaml")
    assert example.batch == "example" and len(example.jobs) == 5
    season = load(root / "season1-ja.yaml")
    assert len(season.jobs) == 50


def test_x_keys_hold_anchors_for_reuse() -> None:
    m = parse(
        "x-cdn: &video https://cdn.test/master.mp4\n"
        "jobs:\n"
        "  - {video: *video, audio: 'https://cdn.test/ja.wav', reference_id: ja}\n"
        "  - {video: *video, audio: 'https://cdn.test/de.wav', reference_id: de}\n",
        "x.yaml",
        "x",
    )
    assert [j.video_url for j in m.jobs] == ["https://cdn.test/master.mp4"] * 2


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("jbos:\n  - video: https://v.test/a.mp4\n    audio: https://a.test/a.wav\n", "'jobs'"),
        ("jobs:\n  - vidoe: https://v.test/a.mp4\n    audio: https://a.test/a.wav\n", "'video'"),
        ("jobs:\n  - video: https://v.test/a.mp4\n    audoi: https://a.test/a.wav\n", "'audio'"),
        ("defaults:\n  disable_active_speaker_detectoin: true\njobs: []\n", "'disable_active"),
    ],
)
def test_a_misspelt_key_gets_a_did_you_mean(text: str, hint: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse(text, "m.yaml", "b")
    assert any(f"did you mean {hint}" in p.text for p in info.value.problems), info.value.problems


def test_without_libyaml_a_character_yaml_refuses_is_a_yaml_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PyYAML's pure-Python reader refuses such a character as the loader is made: still a
    clean YAML error of the manifest, as with the C loader, never a crash."""
    import yaml

    from dubrunner import yamlstream

    monkeypatch.setattr(yamlstream, "_BaseLoader", yaml.SafeLoader)
    with pytest.raises(ManifestError) as info:
        parse("jobs:\n  - video: a\x01\n", "m.yaml", "b")
    assert info.value.lines() == [
        "m.yaml: YAML error: unacceptable character #x0001: special characters are not "
        'allowed\n  in "<unicode string>", position 18'
    ]


@pytest.mark.parametrize(
    ("tagged", "line"),
    [
        ("  - video: !!bool https://x.test/v.mp4\n    audio: https://x.test/a.wav\n", 3),
        ("  - &j !!bool video: https://x.test/v.mp4\n    audio: https://x.test/a.wav\n", 3),
        ("  - video: https://x.test/v.mp4\n    audio: !!int https://x.test/a.wav\n", 4),
    ],
)
def test_a_tag_its_text_cannot_be_is_a_problem_with_its_line(tagged: str, line: int) -> None:
    """`!!bool` on a URL (PyYAML raises KeyError there, not a YAML error): a problem of the
    manifest, never an internal error."""
    with pytest.raises(ManifestError) as info:
        parse("batch: b\njobs:\n" + tagged, "m.yaml", "b")
    assert [p.line for p in info.value.problems] == [line]
    assert "is not a valid" in info.value.problems[0].text
