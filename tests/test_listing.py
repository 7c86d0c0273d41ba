"""`dubrunner manifest from-listing`: a folder (or a file of URLs) paired by two patterns into a
manifest that loads; unpaired files named; bad patterns or listings exit 2 with nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dubrunner.cli import cli
from dubrunner.emulator import Emulator
from dubrunner.manifest import load
from tests import mediafiles
from tests.conftest import TOKEN, Database, assert_exactly_once, clean_env, db_rows, run_cli

PATTERNS = ["--video", "S1/E{ep}.mp4", "--audio", "dubs/ja/E{ep}-ja.wav"]


def season(root: Path, episodes: int, dubs: list[int]) -> Path:
    (root / "S1").mkdir(parents=True)
    (root / "dubs" / "ja").mkdir(parents=True)
    for ep in range(1, episodes + 1):
        (root / "S1" / f"E{ep:02d}.mp4").write_bytes(f"video {ep}".encode())
    for ep in dubs:
        (root / "dubs" / "ja" / f"E{ep:02d}-ja.wav").write_bytes(f"audio {ep}".encode())
    (root / "notes.txt").write_text("matches neither pattern")
    (root / "S1" / ".DS_Store").write_text("hidden: not listed")
    return root


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(cli, ["manifest", "from-listing", *args])


def test_50_episodes_and_48_dubs_make_48_pairs_and_name_the_2_unpaired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    season(tmp_path / "lib", 50, [ep for ep in range(1, 51) if ep not in (7, 31)])
    monkeypatch.chdir(tmp_path)
    out = Path("manifests") / "s1-ja.csv"
    out.parent.mkdir()
    result = invoke(["lib", *PATTERNS, "--out", str(out)])
    assert result.exit_code == 1, result.output  # written, but not every file paired
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "unpaired video: S1/E07.mp4",
        "unpaired video: S1/E31.mp4",
        f"48 pairs written to {out}; 1 file(s) matched neither pattern (left out); "
        "2 video(s) and 0 audio(s) unpaired (left out)",
    ]
    rows = out.read_text().splitlines()
    assert rows[0] == "video,audio" and len(rows) == 49
    assert rows[1] == "../lib/S1/E01.mp4,../lib/dubs/ja/E01-ja.wav"  # from the manifest's folder
    manifest = load(out)  # loads as written: 48 local jobs, paired by episode
    assert manifest.batch == "s1-ja" and len(manifest.jobs) == 48
    for job in manifest.jobs:
        ep = Path(job.video_url).stem.removeprefix("E")
        assert job.audio_url.endswith(f"/dubs/ja/E{ep}-ja.wav")
        assert ep not in ("07", "31")


def test_every_file_paired_exits_0_and_yaml_goes_to_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Episodes 1-12 unpadded: the order is the episodes' (E2 before E10), not the characters'.
    lib = tmp_path / "lib"
    for ep in range(1, 13):
        for path in (lib / "S1" / f"E{ep}.mp4", lib / "dubs" / "ja" / f"E{ep}-ja.wav"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(path.name.encode())
    monkeypatch.chdir(tmp_path)
    result = invoke(["lib", *PATTERNS, "--reference-id", "s1e{ep}-ja"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "12 pairs\n"
    (tmp_path / "m.yaml").write_text(result.stdout)
    manifest = load(tmp_path / "m.yaml")
    assert [j.reference_id for j in manifest.jobs] == [f"s1e{ep}-ja" for ep in range(1, 13)]
    quiet = invoke([str(lib), *PATTERNS, "-q"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    # An absolute SOURCE: absolute paths, wherever the manifest goes.
    assert f'  - video: "{lib}/S1/E1.mp4"' in quiet.stdout.splitlines()


def test_a_file_of_urls_pairs_by_the_shared_placeholders(tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(
        "# exported from the CDN\n"
        "https://cdn.test/s1/e01.mp4?sig=aa\n"
        "https://cdn.test/s1/e02.mp4?sig=bb\n"
        "\n"
        "https://cdn.test/dubs/e02-de.wav?sig=cc\n"
        "https://cdn.test/dubs/e01-de.wav?sig=dd\n"
        "https://cdn.test/dubs/e03-de.wav?sig=ee\n"
    )
    out = tmp_path / "de.jsonl"
    result = invoke(
        [
            str(urls),
            "--video",
            "https://cdn.test/s1/e{ep}.mp4?sig={vsig}",
            "--audio",
            "https://cdn.test/dubs/e{ep}-de.wav?sig={asig}",
            "--out",
            str(out),
        ]
    )
    assert result.exit_code == 1, result.output
    assert "unpaired audio: https://cdn.test/dubs/e03-de.wav?sig=ee" in result.stderr
    jobs = load(out).jobs
    assert [(j.video_url, j.audio_url) for j in jobs] == [
        ("https://cdn.test/s1/e01.mp4?sig=aa", "https://cdn.test/dubs/e01-de.wav?sig=dd"),
        ("https://cdn.test/s1/e02.mp4?sig=bb", "https://cdn.test/dubs/e02-de.wav?sig=cc"),
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--video", "S1/E.mp4", "--audio", "dubs/ja/E{ep}-ja.wav"], "has no {placeholder}"),
        (["--video", "S1/E{ep}.mp4", "--audio", "dubs/ja/E{n}-ja.wav"], "share no placeholder"),
        (["--video", "S1/E{ep.mp4", "--audio", "dubs/ja/E{ep}-ja.wav"], "a placeholder is {name}"),
        (["--video", "S1/{x}{ep}.mp4", "--audio", "dubs/ja/E{ep}-ja.wav"], "3 videos for ep='1'"),
        (["--video", "S2/E{ep}.mp4", "--audio", "dubs/ja/E{ep}-ja.wav"], "no pair in"),
        ([*PATTERNS, "--reference-id", "s1e{season}"], "no placeholder 'season'"),
    ],
    ids=["no_placeholder", "none_shared", "bad_brace", "ambiguous", "no_pair", "bad_template"],
)
def test_bad_patterns_exit_2_and_write_nothing(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    lib = season(tmp_path / "lib", 3, [1, 2, 3])
    (lib / "S1" / "E1.mp4").write_bytes(b"video 1 again")  # {x}{ep}: E01, E1, XE01 all ep='1'
    (lib / "S1" / "XE01.mp4").write_bytes(b"the same key as E01 for S1/{x}{ep}.mp4")
    out = tmp_path / "m.yaml"
    out.write_text("the old manifest\n")
    result = invoke([str(lib), *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert out.read_text() == "the old manifest\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_missing_source_exits_2(tmp_path: Path) -> None:
    result = invoke([str(tmp_path / "nope"), *PATTERNS])
    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path / 'nope'}: no such folder or file\n"


@pytest.mark.slow
def test_a_listed_folder_submitted_as_a_csv_by_real_processes(
    tmp_path: Path, emulator: Emulator, db: Database
) -> None:
    """The whole path: a season on disk → from-listing → a CSV manifest → submit (uploads) →
    each pair sent exactly once; submitting the same CSV again sends nothing."""
    lib = tmp_path / "lib"
    for ep in range(1, 6):
        mediafiles.video(lib / "S1" / f"E{ep:02d}.mp4", seed=f"v{ep}")
        if ep != 4:
            mediafiles.audio(lib / "dubs" / "ja" / f"E{ep:02d}-ja.wav", seed=f"a{ep}")
    env = clean_env(
        CHAMELAION_BASE_URL=emulator.base_url, CHAMELAION_API_KEY=TOKEN, DUBRUNNER_DB=db.url
    )
    made = run_cli(
        ["manifest", "from-listing", "lib", *PATTERNS, "--out", "s1-ja.csv"], env, cwd=tmp_path
    )
    assert made.code == 1, made.err
    assert made.err.splitlines()[0] == "unpaired video: S1/E04.mp4"
    first = run_cli(["submit", "s1-ja.csv", "--concurrency", "2"], env, cwd=tmp_path)
    assert first.code == 0, first.err
    again = run_cli(["submit", "s1-ja.csv"], env, cwd=tmp_path)
    assert again.code == 0, again.err
    assert_exactly_once(emulator, db, 4)
    assert {row[0] for row in db_rows(db, "SELECT batch FROM jobs")} == {"s1-ja"}
    bad = tmp_path / "bad.csv"
    bad.write_text("video,audio\nlib/S1/E04.mp4,\n")
    refused = run_cli(["submit", str(bad)], env)
    assert refused.code == 2
    assert (
        refused.err.splitlines()[0] == f"error: {bad}:2: job 1: no audio (the audio cell is empty)"
    )
    assert len(db_rows(db, "SELECT id FROM jobs")) == 4


@pytest.mark.parametrize("fmt", ["yaml", "csv", "jsonl"])
def test_a_file_name_that_is_not_utf8_is_named_unusable_and_never_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    lib = season(tmp_path / "lib", 2, [1, 2])
    try:
        (lib / "S1" / os.fsdecode(b"E\xff3.mp4")).write_bytes(b"video 3")
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    (lib / "dubs" / "ja" / "E\x014-ja.wav").write_bytes(b"audio 4")
    monkeypatch.chdir(tmp_path)
    out = Path(f"m.{fmt}")
    for args in (["--out", str(out)], ["--format", fmt]):
        result = invoke(["lib", *PATTERNS, *args])
        assert result.exit_code == 1, result.output  # written, two files left out
        assert result.stderr.splitlines() == [
            "unusable file: S1/E\\xff3.mp4 (name is not valid UTF-8, skipped)",
            "unusable file: dubs/ja/E\\x014-ja.wav (name contains a control character "
            "(U+0001), skipped)",
            "2 pairs"
            + (f" written to {out}" if "--out" in args else "")
            + "; 1 file(s) matched neither pattern (left out); 2 file(s) unusable (left out)",
        ], result.output
        if "--format" in args:
            out.write_text(result.stdout, encoding="utf-8")
        manifest = load(out)  # as written: the two good pairs, nothing else
        assert [Path(j.video_url).name for j in manifest.jobs] == ["E01.mp4", "E02.mp4"]
        text = out.read_text(encoding="utf-8")
        assert "E3" not in text and "E\\xff" not in text and "E4" not in text


def test_a_source_whose_path_is_not_utf8_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        root = tmp_path / os.fsdecode(b"d\xfe")
        season(root / "lib", 1, [1])
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    monkeypatch.chdir(tmp_path)
    result = invoke([str(root / "lib"), *PATTERNS, "--out", "m.csv"])
    assert result.exit_code == 2, result.output
    assert "its path is not valid UTF-8; nothing written" in result.output
    assert "\\xfe" in result.output and not (tmp_path / "m.csv").exists()
