"""Local media in manifests: paths, checks, identity by content, the digest cache (fast tier)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from dubrunner.cli import cli
from dubrunner.localmedia import Digests, LocalFile, path_of_uri, sniff
from dubrunner.manifest import ManifestError, derive_reference_id
from dubrunner.manifest import load as load_manifest
from dubrunner.store import LoadConflict, Store
from tests import mediafiles
from tests.conftest import Database, db_rows


def _ref(batch: str, video: Path, audio: Path) -> str:
    return derive_reference_id(
        batch, f"sha256:{mediafiles.sha256(video)}", f"sha256:{mediafiles.sha256(audio)}"
    )


def test_every_way_of_naming_a_local_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    folder = tmp_path / "project"
    v = mediafiles.video(folder / "media" / "a.mp4")
    a = mediafiles.audio(folder / "media" / "a.wav")
    hv = mediafiles.video(home / "v b.mp4", seed="home")
    ha = mediafiles.audio(home / "a.wav", seed="home")
    elsewhere = mediafiles.audio(tmp_path / "abs.wav", seed="abs")
    (folder / "m.yaml").write_text(
        "batch: loc\n"
        "jobs:\n"
        "  - video: media/a.mp4\n"  # relative to the manifest's folder
        "    audio: ./media/a.wav\n"
        f"  - video: ~/v b.mp4\n"
        f"    audio: {ha.as_uri()}\n"
        "  - inputs:\n"
        f"      - {{type: audio, url: '{elsewhere}'}}\n"
        f"      - {{type: video, url: 'file://localhost{v}'}}\n"
    )
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    m = load_manifest(folder / "m.yaml")
    assert [path_of_uri(j.video_url) for j in m.jobs] == [str(v), str(hv), str(v)]
    assert [path_of_uri(j.audio_url) for j in m.jobs] == [str(a), str(ha), str(elsewhere)]
    first = m.jobs[0]
    assert first.is_local and first.video_url.startswith("file:///")
    assert first.video_sha256 == mediafiles.sha256(v)
    assert (first.video_size, first.audio_size) == (v.stat().st_size, a.stat().st_size)
    assert first.reference_id == _ref("loc", v, a)


def test_one_url_and_one_file_is_refused_with_its_line(tmp_path: Path) -> None:
    mediafiles.video(tmp_path / "v.mp4")
    (tmp_path / "m.yaml").write_text(
        "jobs:\n"
        "  - video: v.mp4\n"
        "    audio: https://cdn.example.com/a.wav\n"
        "  - inputs:\n"
        "      - {type: video, url: 'https://cdn.example.com/v.mp4'}\n"
        "      - {type: audio, url: a.wav}\n"
    )
    with pytest.raises(ManifestError) as err:
        load_manifest(tmp_path / "m.yaml")
    lines = err.value.lines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{tmp_path / 'm.yaml'}:2: job 1: video 'v.mp4' is a local file")
    assert "not one of each" in lines[0]
    assert lines[1].startswith(f"{tmp_path / 'm.yaml'}:5: job 2: audio 'a.wav' is a local file")


def test_every_bad_file_is_listed_with_its_line_and_nothing_is_loaded(tmp_path: Path) -> None:
    mediafiles.video(tmp_path / "ok.mp4")
    mediafiles.audio(tmp_path / "ok.wav")
    (tmp_path / "dir.wav").mkdir()
    (tmp_path / "empty.wav").write_bytes(b"")
    mediafiles.audio(tmp_path / "big.wav", 5000)
    (tmp_path / "m.yaml").write_text(
        "jobs:\n"
        "  - {video: ok.mp4, audio: missing.wav}\n"
        "  - {video: ok.mp4, audio: dir.wav}\n"
        "  - {video: ok.mp4, audio: empty.wav}\n"
        "  - {video: ok.mp4, audio: big.wav}\n"
        "  - {video: ok.mp4, audio: 'ftp://host/a.wav'}\n"
        "  - {video: ok.mp4, audio: ok.wav}\n"
    )
    with pytest.raises(ManifestError) as err:
        load_manifest(tmp_path / "m.yaml", max_upload_bytes=4096)
    lines = err.value.lines()
    name = tmp_path / "m.yaml"
    assert lines == [
        f"{name}:2: job 1: audio: no such file: {tmp_path / 'missing.wav'}",
        f"{name}:3: job 2: audio: {tmp_path / 'dir.wav'} is a directory, not a file",
        f"{name}:4: job 3: audio: {tmp_path / 'empty.wav'} is empty",
        f"{name}:5: job 4: audio: {tmp_path / 'big.wav'} is 5,000 bytes; the limit is 4,096 "
        "(--max-upload-bytes)",
        f"{name}:6: job 5: audio must be an absolute http(s) URL or a local file, not a ftp:// URL",
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    mediafiles.video(tmp_path / "v.mp4")
    secret = mediafiles.audio(tmp_path / "a.wav")
    secret.chmod(0)
    (tmp_path / "m.yaml").write_text("jobs:\n  - {video: v.mp4, audio: a.wav}\n")
    with pytest.raises(ManifestError) as err:
        load_manifest(tmp_path / "m.yaml")
    assert err.value.lines() == [
        f"{tmp_path / 'm.yaml'}:2: job 1: audio: cannot read {secret}: Permission denied"
    ]


def test_an_unreadable_file_is_refused_even_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root reads any file, so the refusal is made to happen: open() fails as it would."""
    mediafiles.video(tmp_path / "v.mp4")
    secret = mediafiles.audio(tmp_path / "a.wav")
    real_open = open

    def refusing(path: object, *args: object, **kwargs: object) -> object:
        if str(path) == str(secret):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("dubrunner.localmedia.open", refusing, raising=False)
    (tmp_path / "m.yaml").write_text("jobs:\n  - {video: v.mp4, audio: a.wav}\n")
    with pytest.raises(ManifestError) as err:
        load_manifest(tmp_path / "m.yaml")
    assert err.value.lines() == [
        f"{tmp_path / 'm.yaml'}:2: job 1: audio: cannot read {secret}: Permission denied"
    ]


def test_the_same_files_twice_in_a_manifest_is_one_job_too_many(tmp_path: Path) -> None:
    mediafiles.video(tmp_path / "v.mp4")
    mediafiles.audio(tmp_path / "a.wav")
    shutil.copy(tmp_path / "a.wav", tmp_path / "copy.wav")  # the same content, another name
    (tmp_path / "m.yaml").write_text(
        "jobs:\n  - {video: v.mp4, audio: a.wav}\n  - {video: v.mp4, audio: copy.wav}\n"
    )
    with pytest.raises(ManifestError) as err:
        load_manifest(tmp_path / "m.yaml")
    assert "is already used by the job at line 2" in err.value.lines()[0]


def test_magic_bytes() -> None:
    assert sniff(mediafiles.MP4_HEAD) == ("mp4", "video/mp4")
    assert sniff(b"\0\0\0\x14ftypqt  ") == ("mov", "video/quicktime")
    assert sniff(b"\0\0\0\x14ftypM4A ") == ("m4a", "audio/mp4")
    assert sniff(b"\x1a\x45\xdf\xa3\x9f\x42\x82\x84webm") == ("webm", "video/webm")
    assert sniff(b"\x1a\x45\xdf\xa3\x9f\x42\x82\x88matroska") == ("mkv", "video/x-matroska")
    assert sniff(mediafiles.WAV_HEAD) == ("wav", "audio/wav")
    assert sniff(b"fLaC\0\0\0\x22") == ("flac", "audio/flac")
    assert sniff(b"ID3\x04\0") == ("mp3", "audio/mpeg")
    assert sniff(b"\xff\xfb\x90\x64") == ("mp3", "audio/mpeg")
    assert sniff(b"\xff\xf1\x50\x80") == ("aac", "audio/aac")
    assert sniff(b"<!DOCTYPE html>") is None


def test_digests_are_computed_once_and_cached_by_path_size_and_mtime(
    db: Database, tmp_path: Path
) -> None:
    store = Store(db.url)
    manifest = mediafiles.local_manifest(tmp_path, 3)
    first = Digests(store.cached_digest, store.save_digest)
    m = load_manifest(manifest, digests=first)
    assert first.computed == 6
    again = Digests(store.cached_digest, store.save_digest)
    assert load_manifest(manifest, digests=again).jobs == m.jobs
    assert again.computed == 0
    rows = db_rows(db, "SELECT path, size, sha256 FROM file_digests ORDER BY path")
    assert len(rows) == 6
    for path, size, sha in rows:
        assert (size, sha) == (Path(path).stat().st_size, mediafiles.sha256(Path(path)))
    # A file rewritten (its mtime changes) is hashed again.
    target = tmp_path / "media" / "e000-ja.wav"
    mediafiles.audio(target, 2048, seed="new")
    os.utime(target, ns=(1, 1))
    third = Digests(store.cached_digest, store.save_digest)
    load_manifest(manifest, digests=third)
    assert third.computed == 1
    stamp = LocalFile.of(str(target), target.stat()).stamp
    assert store.cached_digest(str(target), 2048, stamp) == mediafiles.sha256(target)
    store.close()


def test_the_cache_is_not_fooled_by_a_file_swapped_under_the_same_size_and_mtime(
    db: Database, tmp_path: Path
) -> None:
    """A symlink pointed at another file of the same size and mtime (another inode), or a file
    rewritten with its mtime put back (another ctime), is hashed again."""
    store = Store(db.url)
    first = mediafiles.video(tmp_path / "first.mp4", 8192)
    second = mediafiles.video(tmp_path / "second.mp4", 8192, seed="second")
    link = tmp_path / "v.mp4"
    link.symlink_to(first.name)
    digests = Digests(store.cached_digest, store.save_digest)
    assert digests(LocalFile.of(str(link), link.stat())) == mediafiles.sha256(first)
    digests(LocalFile.of(str(first), first.stat()))
    os.utime(second, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns))
    link.unlink()
    link.symlink_to(second.name)
    again = Digests(store.cached_digest, store.save_digest)
    assert again(LocalFile.of(str(link), link.stat())) == mediafiles.sha256(second)
    assert again.computed == 1
    before = first.stat()
    first.write_bytes(second.read_bytes())
    os.utime(first, ns=(before.st_atime_ns, before.st_mtime_ns))
    third = Digests(store.cached_digest, store.save_digest)
    assert third(LocalFile.of(str(first), first.stat())) == mediafiles.sha256(second)
    assert third.computed == 1
    store.close()


def _load(store: Store, manifest: Path) -> None:
    m = load_manifest(manifest, digests=Digests(store.cached_digest, store.save_digest))
    store.load(m.batch, m.jobs, str(manifest))


def test_moving_the_folder_creates_no_new_jobs(db: Database, tmp_path: Path) -> None:
    store = Store(db.url)
    manifest = mediafiles.local_manifest(tmp_path / "here", 3)
    _load(store, manifest)
    before = db_rows(db, "SELECT id, reference_id FROM jobs ORDER BY id")
    db_rows(db, "UPDATE jobs SET state = 'submitted', request_id = 'r' WHERE id = ?", before[0][0])
    shutil.move(tmp_path / "here", tmp_path / "there")
    _load(store, tmp_path / "there" / "m.yaml")
    assert db_rows(db, "SELECT id, reference_id FROM jobs ORDER BY id") == before
    paths = [path_of_uri(u) for (u,) in db_rows(db, "SELECT video_url FROM jobs ORDER BY id")]
    assert all(p.startswith(str(tmp_path / "there")) for p in paths), paths
    store.close()


def test_a_changed_audio_file_updates_a_job_never_sent_and_is_refused_once_sent(
    db: Database, tmp_path: Path
) -> None:
    store = Store(db.url)
    manifest = mediafiles.local_manifest(tmp_path, 2)
    _load(store, manifest)
    (id0, ref0), (id1, _) = db_rows(db, "SELECT id, reference_id FROM jobs ORDER BY id")
    audio0 = tmp_path / "media" / "e000-ja.wav"
    mediafiles.audio(audio0, 2048, seed="re-dubbed")
    _load(store, manifest)
    rows = db_rows(db, "SELECT id, reference_id, audio_sha256, state FROM jobs ORDER BY id")
    assert len(rows) == 2
    assert rows[0][0] == id0 and rows[0][1] != ref0  # the same job, its id follows its files
    assert rows[0][1] == _ref("local", tmp_path / "media" / "e000.mp4", audio0)
    assert rows[0][2] == mediafiles.sha256(audio0)
    # Once sent, a changed file is a different paid job: refused, nothing loaded.
    db_rows(db, "UPDATE jobs SET state = 'submitted', request_id = 'r1' WHERE id = ?", id1)
    mediafiles.audio(tmp_path / "media" / "e001-ja.wav", 2048, seed="re-dubbed")
    mediafiles.audio(audio0, 2048, seed="again")
    with pytest.raises(LoadConflict) as err:
        _load(store, manifest)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(f"{manifest}:5: the files of job ")
    assert "changed since it was sent" in err.value.problems[0]
    assert db_rows(db, "SELECT id, reference_id FROM jobs ORDER BY id") == [
        (id0, rows[0][1]),
        (id1, db_rows(db, "SELECT reference_id FROM jobs WHERE id = ?", id1)[0][0]),
    ]
    store.close()


def test_explicit_reference_ids_follow_the_rules_of_urls(db: Database, tmp_path: Path) -> None:
    store = Store(db.url)
    manifest = mediafiles.local_manifest(tmp_path, 1, refs=True)
    _load(store, manifest)
    db_rows(db, "UPDATE jobs SET state = 'submitted', request_id = 'r1'")
    mediafiles.audio(tmp_path / "media" / "e000-ja.wav", 2048, seed="other")
    with pytest.raises(LoadConflict) as err:
        _load(store, manifest)
    assert "was already sent to the API with other URLs, files or settings" in str(err.value)
    store.close()


def test_validate_and_load_through_the_cli(tmp_path: Path) -> None:
    manifest = mediafiles.local_manifest(tmp_path, 2)
    runner = CliRunner()
    result = runner.invoke(cli, ["validate", str(manifest)])
    assert result.exit_code == 0, result.output
    assert "2 jobs" in result.output
    db = tmp_path / "jobs.db"
    result = runner.invoke(cli, ["load", str(manifest), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "2 new" in result.output
    assert len(db_rows(db, "SELECT * FROM file_digests")) == 4
    result = runner.invoke(
        cli, ["load", str(manifest), "--db", str(db), "--max-upload-bytes", "10"]
    )
    assert result.exit_code == 2
    assert "(--max-upload-bytes)" in result.output
    sha = hashlib.sha256((tmp_path / "media" / "e000.mp4").read_bytes()).hexdigest()
    assert db_rows(db, "SELECT count(*) FROM jobs WHERE video_sha256 = ?", sha) == [(1,)]


def test_check_finds_a_video_given_as_audio_by_its_magic_bytes(tmp_path: Path) -> None:
    mediafiles.video(tmp_path / "v.mp4")
    mediafiles.video(tmp_path / "also-video.wav", seed="x")  # named .wav, an mp4 inside
    mediafiles.audio(tmp_path / "a.wav")
    (tmp_path / "text.mp4").write_text("<html>not a video</html>")
    (tmp_path / "m.yaml").write_text(
        "batch: chk\n"
        "jobs:\n"
        "  - {reference_id: ok, video: v.mp4, audio: a.wav}\n"
        "  - {reference_id: swapped, video: v.mp4, audio: also-video.wav}\n"
        "  - {reference_id: html, video: text.mp4, audio: a.wav}\n"
    )
    db = tmp_path / "jobs.db"
    result = CliRunner().invoke(cli, ["check", str(tmp_path / "m.yaml"), "--db", str(db)])
    assert result.exit_code == 2, result.output
    name = tmp_path / "m.yaml"
    assert result.output.splitlines() == [
        f"error: {name}:4: swapped: audio: {tmp_path / 'also-video.wav'} is video (mp4, by its "
        "first bytes), not audio",
        f"error: {name}:5: html: video: {tmp_path / 'text.mp4'} is not a video file the API "
        "takes (by its first bytes; mp4, mov, mkv, webm; wav, mp3, aac, m4a, flac)",
        f"error: 2 problem(s) with local files in {name}",
    ]
    assert db_rows(db, "SELECT count(*) FROM jobs") == [(0,)]


@pytest.mark.parametrize(
    ("audio", "line", "expected"),
    [
        ("missing.wav", 3, "audio: no such file"),
        ("folder", 3, "is a directory, not a file"),
        ("empty.wav", 3, "is empty"),
        ("https://cdn.example.com/a.wav", 2, "is a local file and audio a URL"),
    ],
)
def test_check_and_submit_refuse_bad_files_with_exit_2(
    tmp_path: Path, audio: str, line: int, expected: str
) -> None:
    mediafiles.video(tmp_path / "v.mp4")
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "m.yaml").write_text(f"jobs:\n  - video: v.mp4\n    audio: '{audio}'\n")
    db = tmp_path / "jobs.db"
    for command in ("check", "submit", "load", "validate"):
        args = [command, str(tmp_path / "m.yaml")] + (
            ["--db", str(db)] if command != "validate" else []
        )
        result = CliRunner().invoke(cli, args, env={"CHAMELAION_API_KEY": "k-123"})
        assert result.exit_code == 2, (command, result.output)
        first = result.output.splitlines()[0]
        assert first.startswith(f"error: {tmp_path / 'm.yaml'}:{line}: job 1: "), first
        assert expected in first
        assert not db.exists() or db_rows(db, "SELECT count(*) FROM jobs") == [(0,)]


def test_the_media_check_of_a_batch_reads_local_files(tmp_path: Path) -> None:
    from dubrunner.preflight import Pair, Preflight

    video = mediafiles.video(tmp_path / "v.mp4").as_uri()
    audio = mediafiles.audio(tmp_path / "a.wav").as_uri()
    preflight = Preflight(max_upload_bytes=3000)
    try:
        report = preflight.run(
            [Pair("too-big", video, video), Pair("fine", video.replace("v.mp4", "x"), audio)]
        )
    finally:
        preflight.close()
    found = {(p.reference_id, p.which): p.problem for p in report.problems}
    assert found == {
        ("too-big", "audio"): f"{tmp_path / 'v.mp4'} is 4,096 bytes; the limit is 3,000 "
        "(--max-upload-bytes)",
        ("too-big", "video"): f"{tmp_path / 'v.mp4'} is 4,096 bytes; the limit is 3,000 "
        "(--max-upload-bytes)",
        ("fine", "video"): f"no such file: {tmp_path / 'x'}",
    }


def test_the_bundled_local_example_is_valid_small_and_of_the_right_kinds() -> None:
    from dubrunner.sessions import MediaCheck, check_local_files

    root = Path(__file__).resolve().parent.parent / "manifests"
    m = load_manifest(root / "local-example.yaml")
    assert m.batch == "local-example" and len(m.jobs) == 2
    assert all(j.is_local for j in m.jobs)
    assert check_local_files(m, MediaCheck()) is None
    assert sum(f.stat().st_size for f in (root / "media").iterdir()) < 300_000


def test_check_hashes_local_files_again_whatever_the_cache_holds(tmp_path: Path) -> None:
    """The digest cache trusts a file's size and stamp; `check` does not: a batch's files must
    hash to what its jobs were loaded with, and a manifest's are hashed again, the cache
    refreshed (a stale row, as a file system that keeps no true ctime could leave, is mended)."""
    manifest = mediafiles.local_manifest(tmp_path, 2, size=8192)
    db = tmp_path / "jobs.db"
    runner = CliRunner()
    loaded = runner.invoke(cli, ["load", str(manifest), "--db", str(db)])
    assert loaded.exit_code == 0, loaded.output
    target = tmp_path / "media" / "e001.mp4"
    true_sha = mediafiles.sha256(target)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE file_digests SET sha256 = ? WHERE path = ?", ("0" * 64, str(target)))
    result = runner.invoke(cli, ["check", str(manifest), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert db_rows(db, "SELECT sha256 FROM file_digests WHERE path = ?", str(target)) == [
        (true_sha,)
    ]
    before = target.stat()
    mediafiles.video(target, 8192, seed="rewritten after loading")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = runner.invoke(cli, ["check", "local", "--db", str(db)])
    assert result.exit_code == 1, result.output
    assert "changed since it was loaded" in " ".join(result.output.split())
    assert "checked 4 media URL(s) of 2 job(s): 1 job(s) with a problem" in result.output
    assert db_rows(db, "SELECT count(*) FROM attempts") == [(0,)]
