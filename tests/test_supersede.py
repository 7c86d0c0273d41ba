"""Replacing a job that was sent (`dubrunner supersede`, `submit --supersede`): the old request is
never sent again, the new job is sent once, the old row stays for audit and leaves its batch's
counts, exports and selections; a job in flight, still running or never sent is refused."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dubrunner import superseding
from dubrunner.api import ApiClient
from dubrunner.cli import cli
from dubrunner.constants import EXIT_OK
from dubrunner.emulator import Emulator
from dubrunner.localmedia import Digests
from dubrunner.manifest import load as load_manifest
from dubrunner.output import export_dict
from dubrunner.records import Lease
from dubrunner.sessions import Polling, poll, submit, submit_pending
from dubrunner.store import LoadConflict, Store
from dubrunner.superseding import SpecOf, SupersedeRefused, successor_id
from tests import mediafiles
from tests.conftest import (
    OPTIONS,
    TOKEN,
    Database,
    FakeUi,
    clean_env,
    db_rows,
    manifest_of,
    run_cli,
    start,
    write_manifest,
)

FAST = Polling(interval=0.05, timeout=30)
# SQLite in the fast tier, PostgreSQL (and its row locks) in the slow one.
EITHER_DATABASE = pytest.mark.parametrize(
    "db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)], indirect=True
)
NEW_VIDEO = "https://cdn.example.com/b/ep1-fixed.mp4"


def spec(video: str | None = None, audio: str | None = None) -> SpecOf:
    return SpecOf(video, audio, None, Path.cwd(), Digests())


def table(db: Database) -> list[tuple[object, ...]]:
    return db_rows(db, "SELECT * FROM jobs ORDER BY id")


def test_derived_reference_ids_count_up_from_the_base() -> None:
    assert successor_id("ep1", set()) == "ep1~2"
    assert successor_id("ep1~2", set()) == "ep1~3"  # not ep1~2~2
    assert successor_id("ep1~9", {"ep1~10", "ep1~11"}) == "ep1~12"
    assert successor_id("ep1", {"ep1~2"}) == "ep1~3"
    with pytest.raises(SupersedeRefused, match="longer than 200"):
        successor_id("x" * 199, set())


@EITHER_DATABASE
def test_the_old_request_is_never_sent_again_and_the_new_one_once(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.05)
    m = manifest_of(tmp_path, 3, failing=frozenset({1}))
    submit(store, api, m, OPTIONS, FakeUi(), wait=True, polling=FAST)
    [(old_request,)] = db_rows(db, "SELECT request_id FROM jobs WHERE reference_id = 'b-ep00001'")
    assert store.counts("b") == {"completed": 2, "failed": 1}

    done = store.supersede("b-ep00001", spec(NEW_VIDEO))
    assert (done.old, done.new, done.state) == ("b-ep00001", "b-ep00001~2", "failed")
    # Nothing is sent until the new job is: the old one is out of the counts already.
    assert emulator.accepted()["b-ep00001"] == [old_request]
    assert "b-ep00001~2" not in emulator.accepted()
    assert store.counts("b") == {"completed": 2, "pending": 1}
    assert store.summary("b") == [("b", "completed", 2), ("b", "pending", 1)]
    # retry, resume and a second load cannot bring the old request back.
    assert store.retry("b", ["failed", "halted"], None) == (0, 0)
    assert store.count_in_states("b", ["failed"]) == 0
    assert store.cancel(None, ["b-ep00001"]) == (0, 0, [])
    assert store.load("b", m.jobs, "m.yaml").unchanged == 3

    assert submit_pending(store, api, "b", OPTIONS, FakeUi()).code == EXIT_OK
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=True, polling=FAST).code == EXIT_OK
    ledger = emulator.accepted()
    assert ledger["b-ep00001"] == [old_request]  # posted once, never again
    assert len(ledger["b-ep00001~2"]) == 1
    assert emulator.duplicates() == {}
    assert store.counts("b") == {"completed": 3}

    old, new = store.rows(reference_ids=["b-ep00001", "b-ep00001~2"])
    assert (old.state, old.superseded_by, old.request_id) == ("failed", "b-ep00001~2", old_request)
    assert (new.state, new.supersedes, new.video_url) == ("completed", "b-ep00001", NEW_VIDEO)
    exported = [export_dict(r) for r in store.iter_rows("b")]
    assert [r["reference_id"] for r in exported] == ["b-ep00000", "b-ep00002", "b-ep00001~2"]
    assert [r["supersedes"] for r in exported] == [None, None, "b-ep00001"]

    # A completed job may be superseded too (a redo); the chain counts up, never REF~2~2.
    redo = store.supersede("b-ep00001~2", spec())
    assert (redo.new, redo.state) == ("b-ep00001~3", "completed")
    with pytest.raises(SupersedeRefused, match="already superseded by b-ep00001~2"):
        store.supersede("b-ep00001", spec())


@EITHER_DATABASE
def test_jobs_in_flight_running_or_never_sent_are_refused_and_nothing_changes(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=3600)
    m = manifest_of(tmp_path, 4)
    assert submit(store, api, m, OPTIONS, FakeUi()).code == EXIT_OK
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=False).code == EXIT_OK
    # ep00000 processing at the API; ep00001 owes a look-up; ep00002 claimed by a worker;
    # ep00003 never sent.
    db.rows("UPDATE jobs SET state = 'pending', request_id = NULL, lookup_needed = ?, "
            "lookup_after = ? WHERE reference_id = 'b-ep00001'", True, 4e9)  # fmt: skip
    db.rows("UPDATE jobs SET state = 'pending', request_id = NULL, attempts = 0 "
            "WHERE reference_id IN ('b-ep00002', 'b-ep00003')")  # fmt: skip
    claimed = store.claim("someone", "b", 1, Lease(60))
    assert [j.reference_id for j in claimed] == ["b-ep00002"]
    before = table(db)
    expected = {
        "b-ep00000": "still running at the API (state processing)",
        "b-ep00001": "may have reached the API without its answer",
        "b-ep00002": "being sent by a worker right now (state submitting)",
        "b-ep00003": "holds no request at the API (state pending): change its video or audio "
        "in the manifest",
        "nope": "no job with reference_id 'nope'",
    }
    for ref, why in expected.items():
        with pytest.raises(SupersedeRefused, match=why.replace("(", r"\(").replace(")", r"\)")):
            store.supersede(ref, spec(NEW_VIDEO))
    assert table(db) == before


def test_bad_inputs_are_refused_before_anything_is_written(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.0)
    submit(store, api, manifest_of(tmp_path, 2), OPTIONS, FakeUi(), wait=True, polling=FAST)
    before = table(db)
    for video, audio, why in (
        ("ftp://x/v.mp4", None, "not a ftp:// URL"),
        (str(tmp_path / "v.mp4"), None, "is a local file and audio a URL"),
        (str(tmp_path / "v.mp4"), str(tmp_path / "a.wav"), "video: "),
        # b-ep00001's very inputs: paid again under a second reference_id.
        (
            "https://cdn.example.com/b/ep1.mp4",
            "https://cdn.example.com/b/ep1-ja.wav",
            "loaded before as reference_id 'b-ep00001'.*--allow-same-media",
        ),
    ):
        with pytest.raises(SupersedeRefused, match=why):
            store.supersede("b-ep00000", spec(video, audio))
    assert table(db) == before


def invoke(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args, env=env)
    return result.exit_code, result.stdout, result.stderr


def test_submit_supersede_replaces_the_changed_sent_jobs_and_lists_them(
    emulator: Emulator, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.0)
    env = clean_env(
        CHAMELAION_BASE_URL=emulator.base_url, CHAMELAION_API_KEY=TOKEN, DUBRUNNER_DB=db.url
    )
    manifest = write_manifest(tmp_path / "m.yaml", 3)
    code, _, err = invoke(["submit", str(manifest), "--wait", "--interval", "0.05"], env)
    assert code == 0, err
    manifest.write_text(manifest.read_text().replace("b/ep1.mp4", "b/ep1-fixed.mp4"))
    before = table(db)

    code, out, err = invoke(["submit", str(manifest)], env)
    assert code == 2 and out == ""
    assert "reference_id 'b-ep00001' was already sent" in err
    assert "submit with --supersede to replace it" in err
    assert table(db) == before

    code, _, err = invoke(["submit", str(manifest), "--supersede", "--dry-run"], env)
    assert code == 0 and "1 superseded (b-ep00001)" in err, err
    assert table(db) == before

    code, _, err = invoke(
        ["submit", str(manifest), "--supersede", "--wait", "--interval", "0.05"], env
    )
    assert code == 0, err
    assert "1 superseded (b-ep00001 by b-ep00001~2)" in err
    # The same manifest again, flag or not: nothing more to supersede, nothing sent.
    for extra in ([], ["--supersede"]):
        code, _, err = invoke(["submit", str(manifest), *extra], env)
        assert code == 0 and "3 unchanged (3 already submitted), 0 changed" in err, err
        assert "superseded" not in err
    ledger = emulator.accepted()
    assert {ref: len(ids) for ref, ids in ledger.items()} == {
        "b-ep00000": 1,
        "b-ep00001": 1,
        "b-ep00002": 1,
        "b-ep00001~2": 1,
    }
    code, out, err = invoke(["status", "b-ep00001"], env)
    assert code == 0 and "superseded by b-ep00001~2" in out.replace("\n", " ")
    code, out, err = invoke(["status"], env)
    assert code == 0 and "b-ep00001~2" in out
    assert "1 superseded job(s) not counted or shown" in err
    code, out, err = invoke(["status", "--format", "json"], env)
    assert [r["reference_id"] for r in json.loads(out)] == ["b-ep00000", "b-ep00002", "b-ep00001~2"]


@pytest.mark.slow
def test_supersede_as_a_process_status_and_export_show_the_link(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.0)
    manifest = write_manifest(tmp_path / "m.yaml", 2, failing=frozenset({1}))
    result = run_cli(["submit", str(manifest), "--wait", "--interval", "0.05"], env)
    assert result.code == 1, result.err
    result = run_cli(["supersede", "b-ep00001", "--video", NEW_VIDEO], env)
    assert result.code == 0 and result.out == "", result.err
    assert "b-ep00001 superseded by b-ep00001~2; nothing sent yet" in result.err
    assert "b-ep00001~2" not in emulator.accepted()
    result = run_cli(["supersede", "b-ep00001", "--video", NEW_VIDEO], env)
    assert result.code == 2
    assert result.err.strip() == (
        "error: b-ep00001 was already superseded by b-ep00001~2: supersede that one; nothing "
        "was changed"
    )
    assert run_cli(["resume", "--batch", "b"], env).code == 0
    assert run_cli(["poll", "--wait", "--interval", "0.05"], env).code == 0
    result = run_cli(["status", "b-ep00001~2"], env)
    assert result.code == 0 and "supersedes b-ep00001" in result.out
    result = run_cli(["export"], env)
    rows = list(csv.DictReader(io.StringIO(result.out)))
    assert [(r["reference_id"], r["state"], r["supersedes"]) for r in rows] == [
        ("b-ep00000", "completed", ""),
        ("b-ep00001~2", "completed", "b-ep00001"),
    ]
    result = run_cli(["supersede", "b-ep00001~2"], env)
    assert result.code == 0 and "superseded by b-ep00001~3 (it had completed" in result.err
    assert {ref: len(ids) for ref, ids in emulator.accepted().items()} == {
        "b-ep00000": 1,
        "b-ep00001": 1,
        "b-ep00001~2": 1,
    }


@pytest.mark.parametrize("refs", [True, False], ids=["named", "derived"])
def test_local_files_are_superseded_as_urls_are(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path, refs: bool
) -> None:
    emulator.update(complete_after=0.0)
    path = mediafiles.local_manifest(tmp_path, 2, refs=refs)
    m = load_manifest(path)
    assert submit(store, api, m, OPTIONS, FakeUi(), wait=True, polling=FAST).code == EXIT_OK
    first = m.jobs[0].reference_id
    mediafiles.video(tmp_path / "media" / "e000.mp4", seed="recut")  # changed in place
    changed = load_manifest(path)
    with pytest.raises(LoadConflict, match="--supersede"):
        store.load(changed.batch, changed.jobs, str(path))
    ending = submit(store, api, changed, OPTIONS, FakeUi(), wait=True, polling=FAST, supersede=True)
    assert ending.code == EXIT_OK
    new = f"{first}~2"
    uploads = emulator.uploads()
    assert len(uploads[first]) == len(uploads[new]) == 1
    assert uploads[new][0]["video"][1] == mediafiles.sha256(tmp_path / "media" / "e000.mp4")
    assert store.counts(m.batch) == {"completed": 2}
    # Loading it again supersedes nothing more; the command line takes files too.
    again = store.load(changed.batch, changed.jobs, str(path), supersede=True)
    assert again.superseded == [] and again.unchanged == 2
    other_v = mediafiles.video(tmp_path / "other.mp4", seed="other")
    other_a = mediafiles.audio(tmp_path / "other.wav", seed="other")
    done = store.supersede(new, spec(str(other_v), str(other_a)))
    assert done.new == f"{first}~3"
    [row] = store.rows(reference_ids=[done.new])
    assert row.video_url == other_v.as_uri() and row.supersedes == new
    # The command line, whose digests are cached in the database: hashed before the write.
    env = clean_env(DUBRUNNER_DB=db.url)
    db.rows("UPDATE jobs SET state = 'failed', request_id = 'r-x' WHERE reference_id = ?", done.new)
    args = ["supersede", done.new, "--video", str(other_v), "--audio", str(other_a)]
    code, _, err = invoke([*args, "--allow-same-media"], env)
    assert code == 0 and f"{first}~3 superseded by {first}~4" in err, err
    assert db_rows(db, "SELECT count(*) FROM file_digests")[0][0] >= 2
    assert emulator.duplicates() == {}


def test_a_job_moved_between_the_check_and_the_write_is_left_alone(
    emulator: Emulator,
    store: Store,
    api: ApiClient,
    db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The guard where the data lives: were the check fooled (a worker claiming the job, a
    `retry` putting it back in between), the new job is not inserted and the old one not linked."""
    emulator.update(complete_after=0.0)
    submit(store, api, manifest_of(tmp_path, 1), OPTIONS, FakeUi(), wait=True, polling=FAST)
    db.rows("UPDATE jobs SET state = 'submitting', owner = 'w1'")
    before = table(db)
    monkeypatch.setattr(superseding, "refusal", lambda job: None)
    with pytest.raises(SupersedeRefused, match="moved by another dubrunner"):
        store.supersede("b-ep00000", spec(NEW_VIDEO))
    assert table(db) == before


@pytest.mark.slow
@EITHER_DATABASE
def test_a_running_worker_sends_the_new_job_once_and_never_the_old(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    """`work --follow` on the same database while jobs are superseded under it."""
    emulator.update(complete_after=0.0)
    manifest = write_manifest(tmp_path / "m.yaml", 4, failing=frozenset({1, 2}))
    assert run_cli(["submit", str(manifest), "--wait", "--interval", "0.05"], env).code == 1
    worker = start(["work", "--follow", "--idle-poll", "0.05"], env)
    try:
        for ref in ("b-ep00001", "b-ep00002"):
            result = run_cli(["supersede", ref, "--video", f"{NEW_VIDEO}?{ref}"], env)
            assert result.code == 0, result.err
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not {"b-ep00001~2", "b-ep00002~2"} <= set(
            emulator.accepted()
        ):
            time.sleep(0.05)
        assert run_cli(["retry", "--yes"], env).err.startswith("0 job(s) put back")
        time.sleep(0.5)  # the worker keeps looking: nothing more for it to send
    finally:
        worker.send_signal(signal.SIGINT)
        worker.communicate(timeout=60)
    assert worker.returncode == 130
    ledger = {ref: len(ids) for ref, ids in emulator.accepted().items()}
    assert ledger == {f"b-ep{i:05d}": 1 for i in range(4)} | {"b-ep00001~2": 1, "b-ep00002~2": 1}
    assert db_rows(db, "SELECT count(*) FROM jobs WHERE superseded_by IS NOT NULL") == [(2,)]


def test_a_manifest_naming_any_job_of_its_chain_is_unchanged_and_never_paid_again(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    """REF loaded, changed with --supersede (REF~2), REF~2 superseded by hand (REF~3): the
    manifest still naming REF~2's inputs is unchanged, REF~3 keeps its own, nothing is sent
    again; inputs matching no job of the chain supersede its head."""
    emulator.update(complete_after=0.0)
    manifest = write_manifest(tmp_path / "m.yaml", 2)
    submit(store, api, load_manifest(manifest), OPTIONS, FakeUi(), wait=True, polling=FAST)
    manifest.write_text(manifest.read_text().replace("b/ep1.mp4", "b/ep1-fixed.mp4"))
    changed = load_manifest(manifest)
    plan = store.load("b", changed.jobs, "m.yaml", supersede=True)
    assert plan.supersessions == [("b-ep00001", "b-ep00001~2")]
    assert submit_pending(store, api, "b", OPTIONS, FakeUi()).code == EXIT_OK
    assert poll(store, api, "b", OPTIONS, FakeUi(), wait=True, polling=FAST).code == EXIT_OK
    third = "https://cdn.example.com/b/ep1-third.mp4"
    assert store.supersede("b-ep00001~2", spec(third)).new == "b-ep00001~3"

    for running in (False, True):  # REF~3 pending, then done at the API
        before = table(db)
        plan = store.load("b", changed.jobs, "m.yaml", supersede=True)
        assert (plan.new, plan.changed, plan.superseded) == ([], [], [])
        assert (plan.unchanged, plan.already_submitted) == (2, 2)
        assert table(db) == before
        [head] = store.rows(reference_ids=["b-ep00001~3"])
        assert head.video_url == third
        if not running:
            assert submit_pending(store, api, "b", OPTIONS, FakeUi()).code == EXIT_OK
            assert poll(store, api, "b", OPTIONS, FakeUi(), wait=True, polling=FAST).code == 0
    # The root's own inputs are in the chain too; inputs of none of it supersede the head.
    assert store.load("b", load_manifest(write_manifest(tmp_path / "o.yaml", 2)).jobs,
                      "o.yaml", supersede=True).superseded == []  # fmt: skip
    manifest.write_text(manifest.read_text().replace("ep1-fixed.mp4", "ep1-fourth.mp4"))
    plan = store.load("b", load_manifest(manifest).jobs, "m.yaml", supersede=True)
    assert plan.supersessions == [("b-ep00001~3", "b-ep00001~4")]
    assert {ref: len(ids) for ref, ids in emulator.accepted().items()} == {
        "b-ep00000": 1,
        "b-ep00001": 1,
        "b-ep00001~2": 1,
        "b-ep00001~3": 1,
    }


def test_cancelling_a_replacement_never_sent_makes_the_old_job_current_again(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.0)
    env = clean_env(
        CHAMELAION_BASE_URL=emulator.base_url, CHAMELAION_API_KEY=TOKEN, DUBRUNNER_DB=db.url
    )
    submit(store, api, manifest_of(tmp_path, 2), OPTIONS, FakeUi(), wait=True, polling=FAST)
    assert store.supersede("b-ep00001", spec(NEW_VIDEO)).new == "b-ep00001~2"
    assert store.counts("b") == {"completed": 1, "pending": 1}

    code, _, err = invoke(["cancel", "--ref", "b-ep00001~2"], env)
    assert code == 0, err
    assert "1 pending job(s) cancelled" in err
    assert "b-ep00001 is current again" in err
    old, new = store.rows(reference_ids=["b-ep00001", "b-ep00001~2"])
    assert (old.state, old.superseded_by) == ("completed", None)
    assert (new.state, new.supersedes) == ("cancelled", "b-ep00001")
    # Back in its batch's counts, exports and fetches; superseding it again counts on.
    assert store.counts("b") == {"completed": 2, "cancelled": 1}
    assert "b-ep00001" in [r.reference_id for r in store.iter_rows("b")]
    assert store.supersede("b-ep00001", spec(NEW_VIDEO)).new == "b-ep00001~3"
    assert "b-ep00001~2" not in emulator.accepted()


def test_a_failed_job_owing_a_look_up_is_superseded_by_following_the_advice(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    """Its send may have landed (the answer was lost, no attempt left): the refusal's advice —
    retry, then resume, which looks it up before any resend — leads to a job that can be
    superseded, and the old request is never sent twice. (Failed before: the advice said
    `resume`, which leaves failed jobs alone, and the user went round in circles.)"""
    env = clean_env(
        CHAMELAION_BASE_URL=emulator.base_url, CHAMELAION_API_KEY=TOKEN, DUBRUNNER_DB=db.url
    )
    emulator.update(complete_after=0.0, drop_after_accept=1.0)
    once = dataclasses.replace(OPTIONS, max_attempts=1)
    submit(store, api, manifest_of(tmp_path, 1), once, FakeUi())
    [(state, owed)] = db_rows(db, "SELECT state, lookup_needed FROM jobs")
    assert (state, bool(owed)) == ("failed", True)
    emulator.update(drop_after_accept=0.0)

    code, _, err = invoke(["supersede", "b-ep00000", "--video", NEW_VIDEO], env)
    assert code == 2
    assert "`dubrunner retry --ref b-ep00000`, then `dubrunner resume --batch b`" in err
    assert "if the API has no request for it, resume sends it again" in err
    for args in (["retry", "--ref", "b-ep00000"], ["resume", "--batch", "b"]):
        code, _, err = invoke(args, env)
        assert code == 0, err
    code, _, err = invoke(["poll", "--wait", "--interval", "0.05"], env)
    assert code == 0, err
    code, _, err = invoke(["supersede", "b-ep00000", "--video", NEW_VIDEO], env)
    assert code == 0 and "b-ep00000 superseded by b-ep00000~2" in err, err
    assert invoke(["resume", "--batch", "b"], env)[0] == 0
    assert {ref: len(ids) for ref, ids in emulator.accepted().items()} == {
        "b-ep00000": 1,  # found by the look-up, never sent again
        "b-ep00000~2": 1,
    }


def test_fetch_names_a_replacement_as_readme_says_and_leaves_the_old_file(
    emulator: Emulator, db: Database, tmp_path: Path
) -> None:
    from dubrunner.outfiles import safe_name

    emulator.update(complete_after=0.0)
    env = clean_env(
        CHAMELAION_BASE_URL=emulator.base_url, CHAMELAION_API_KEY=TOKEN, DUBRUNNER_DB=db.url
    )
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path / "m.yaml", 1)
    code, _, err = invoke(["submit", str(manifest), "--wait", "--interval", "0.05"], env)
    assert code == 0, err
    assert invoke(["fetch", "--out", str(out)], env)[0] == 0
    old = (out / "b" / "b-ep00000.mp4").read_bytes()
    assert invoke(["supersede", "b-ep00000", "--video", NEW_VIDEO], env)[0] == 0
    code, _, err = invoke(["submit", str(manifest), "--wait", "--interval", "0.05"], env)
    assert code == 0, err
    assert invoke(["fetch", "--out", str(out)], env)[0] == 0
    new_name = safe_name("b-ep00000~2") + ".mp4"
    assert new_name.startswith("b-ep00000_2~") and len(new_name) == len("b-ep00000_2~") + 16
    assert sorted(p.name for p in (out / "b").iterdir()) == ["b-ep00000.mp4", new_name]
    assert (out / "b" / "b-ep00000.mp4").read_bytes() == old
