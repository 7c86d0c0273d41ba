"""The library's sessions without a terminal or a subprocess: the emulator, a SQLite store, and a
Ui that records what it was told. Then the command line's side: how an ending is shown."""

from __future__ import annotations

import ast
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dubrunner.api import ApiClient
from dubrunner.cli.common import COMMON_OPTIONS, end
from dubrunner.constants import EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_USAGE
from dubrunner.db import StoreError
from dubrunner.emulator import Emulator
from dubrunner.manifest import Manifest
from dubrunner.preflight import Pair
from dubrunner.records import JobSpec
from dubrunner.sessions import (
    Ending,
    Loaded,
    MediaCheck,
    Polling,
    check_media,
    fetch,
    load,
    poll,
    submit,
    submit_pending,
)
from dubrunner.store import Store
from dubrunner.worker import WorkerOptions
from tests.conftest import OPTIONS, Database, FakeUi, manifest_of

FAST = Polling(interval=0.05)


# -- submit: the whole pipeline ----------


def test_submit_sends_polls_and_fetches(
    emulator: Emulator, store: Store, api: ApiClient, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.05, output_bytes=2000)
    out = tmp_path / "out"
    ui = FakeUi()
    ending = submit(store, api, manifest_of(tmp_path, 3), OPTIONS, ui, polling=FAST, fetch_into=out)
    assert ending == Ending(
        f"3 downloaded (0.0 MB, 0 resumed), 0 already there, 0 failed, into {out}", routine=True
    )
    assert ui.said == ["batch b: 3 new, 0 unchanged (0 already submitted), 0 changed"]
    assert ui.told == [
        Ending("all 3 jobs of batch b submitted", routine=True),
        Ending("batch b: 3 completed, 0 failed remotely, 0 still processing", routine=True),
    ]
    assert ui.shown == [("submitting", 3), ("polling", 3), ("downloading", 3)]
    assert len(list((out / "b").iterdir())) == 3


def test_remote_failures_are_still_fetched_and_exit_1(
    emulator: Emulator, store: Store, api: ApiClient, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.05, output_bytes=2000)
    out = tmp_path / "out"
    ui = FakeUi()
    m = manifest_of(tmp_path, 3, failing=frozenset({1}))
    ending = submit(store, api, m, OPTIONS, ui, polling=FAST, fetch_into=out)
    # The download's own summary, with the poll's exit code: exit 1, yet not an error (-q hides).
    assert ending == Ending(
        f"2 downloaded (0.0 MB, 0 resumed), 0 already there, 0 failed, into {out}",
        EXIT_INCOMPLETE,
        routine=True,
    )
    assert ui.told[-1] == Ending(
        "batch b: 2 completed, 1 failed remotely, 0 still processing",
        EXIT_INCOMPLETE,
        routine=True,
    )


def test_submit_without_wait_ends_after_sending(
    emulator: Emulator, store: Store, api: ApiClient, tmp_path: Path
) -> None:
    ui = FakeUi()
    ending = submit(store, api, manifest_of(tmp_path, 2), OPTIONS, ui)
    assert ending == Ending("all 2 jobs of batch b submitted", routine=True)
    assert ui.labels == ["submitting"] and ui.told == []
    again = submit(store, api, manifest_of(tmp_path, 2), OPTIONS, FakeUi())
    assert again.sentence == "all 2 jobs of batch b submitted (0 now, 2 before)"
    assert emulator.stats.generate == 2


def test_a_halt_ends_the_submission_before_polling(
    emulator: Emulator, store: Store, api: ApiClient, tmp_path: Path
) -> None:
    emulator.update(token_limit=1)
    ui = FakeUi()
    options = WorkerOptions(concurrency=1, backoff_base=0.02)
    ending = submit(store, api, manifest_of(tmp_path, 3), options, ui, wait=True, polling=FAST)
    assert ending == Ending(
        "token limit reached after 1 of 3 jobs; 2 left pending — top up the account's tokens, "
        "then `dubrunner resume --batch b`",
        EXIT_INCOMPLETE,
    )
    assert ui.labels == ["submitting"]
    emulator.update(token_limit=None)
    resumed = submit_pending(store, api, None, options, FakeUi())
    assert resumed == Ending("all 3 jobs of all batches submitted (2 now, 1 before)", routine=True)


def test_a_stop_while_submitting_ends_with_130(
    emulator: Emulator, store: Store, api: ApiClient, tmp_path: Path
) -> None:
    ui = FakeUi(stop_at="submitting")
    ending = submit(store, api, manifest_of(tmp_path, 3), OPTIONS, ui, wait=True, polling=FAST)
    assert ending == Ending(
        "interrupted: 0 of 3 jobs submitted; 3 left — `dubrunner resume --batch b` continues",
        EXIT_INTERRUPTED,
    )
    assert ui.labels == ["submitting"] and emulator.stats.generate == 0


def test_a_conflicting_manifest_loads_nothing(
    emulator: Emulator, store: Store, api: ApiClient, tmp_path: Path
) -> None:
    m = manifest_of(tmp_path, 2)
    assert submit(store, api, m, OPTIONS, FakeUi()).code == 0
    first = m.jobs[0]
    changed = JobSpec(first.reference_id, first.video_url + "?v=2", first.audio_url, False, 3)
    other = Manifest(m.path, m.batch, [changed, m.jobs[1]])
    refused = load(store, other)
    assert isinstance(refused, Ending)
    assert (refused.code, refused.is_error) == (EXIT_USAGE, True)
    assert refused.sentence == "1 job(s) conflict with the database; nothing was loaded"
    assert len(refused.details) == 1 and "was already sent to the API" in refused.details[0]
    ui = FakeUi()
    assert submit(store, api, other, OPTIONS, ui) == refused
    assert ui.said == [] and ui.labels == []
    dry = load(store, m, dry_run=True)
    assert isinstance(dry, Loaded) and dry.plan.to_send == 0


def test_the_database_failing_ends_with_exit_2(
    emulator: Emulator,
    store: Store,
    api: ApiClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(batch: str | None) -> int:
        raise StoreError("disk I/O error")

    assert isinstance(load(store, manifest_of(tmp_path, 1)), Loaded)
    monkeypatch.setattr(store, "reset_halted", broken)
    ending = submit_pending(store, api, "b", OPTIONS, FakeUi())
    assert ending == Ending("the database failed: disk I/O error", EXIT_USAGE, is_error=True)


# -- poll and fetch ----------


def test_poll_once_then_wait_until_it_times_out(
    emulator: Emulator, store: Store, api: ApiClient, tmp_path: Path
) -> None:
    emulator.update(complete_after=3600)
    assert submit(store, api, manifest_of(tmp_path, 2), OPTIONS, FakeUi()).code == 0
    summary = "batch b: 0 completed, 0 failed remotely, 2 still processing"
    ui = FakeUi()
    assert poll(store, api, "b", OPTIONS, ui, wait=False) == Ending(summary, routine=True)
    assert ui.shown == [("polling once", 2)]
    timed_out = poll(store, api, "b", OPTIONS, FakeUi(), wait=True, polling=Polling(0.05, 0.1))
    assert timed_out == Ending(f"timed out waiting; {summary}", EXIT_INCOMPLETE, is_error=True)
    stopped = poll(store, api, "b", OPTIONS, FakeUi(stop_at="polling"), wait=True)
    assert stopped == Ending(f"interrupted: {summary}", EXIT_INTERRUPTED)


def test_fetch_says_what_failed(
    emulator: Emulator, store: Store, api: ApiClient, tmp_path: Path, db: Database
) -> None:
    emulator.update(complete_after=0.05, output_bytes=2000)
    assert submit(store, api, manifest_of(tmp_path, 2), OPTIONS, FakeUi(), wait=True).code == 0
    db.rows(
        "UPDATE jobs SET output_url = output_url || '-expired' WHERE reference_id = 'b-ep00001'"
    )
    out = tmp_path / "out"
    summary = f"1 downloaded (0.0 MB, 0 resumed), 0 already there, 1 failed, into {out}"
    ui = FakeUi()
    assert fetch(store, None, out, 2, ui) == Ending(
        f"{summary} — see `dubrunner status --format json`", EXIT_INCOMPLETE, is_error=True
    )
    assert ui.shown == [("downloading", 2)]


# -- checking media ----------


def media_pairs(emulator: Emulator) -> list[Pair]:
    media = emulator.root_url + "media/"
    return [
        Pair("good", f"{media}video/e1.mp4", f"{media}audio/e1.wav"),
        Pair("bad", f"{media}missing/e2.mp4", f"{media}audio/e2.wav"),
    ]


def test_check_media_shows_the_problems(emulator: Emulator) -> None:
    ui = FakeUi()
    ending = check_media(media_pairs(emulator), MediaCheck(), ui)
    assert ending == Ending(
        "checked 4 media URL(s) of 2 job(s): 1 job(s) with a problem", EXIT_INCOMPLETE, routine=True
    )
    assert [(p.reference_id, p.which, p.problem) for p in ui.problems] == [
        ("bad", "video", "HTTP 404")
    ]
    stopped = check_media(media_pairs(emulator), MediaCheck(), FakeUi(stop_at="checking media"))
    assert stopped.code == EXIT_INTERRUPTED and stopped.sentence.startswith("interrupted: checked")


def test_submit_with_media_check_fails_bad_jobs_unsent(
    emulator: Emulator, store: Store, api: ApiClient
) -> None:
    jobs = [
        JobSpec(p.reference_id, p.video_url, p.audio_url, False, i + 3)
        for i, p in enumerate(media_pairs(emulator))
    ]
    ui = FakeUi()
    ending = submit(store, api, Manifest("m.yaml", "media", jobs), OPTIONS, ui, media=MediaCheck())
    assert ending == Ending(
        "1 of 2 jobs submitted; 1 failed — see `dubrunner status --state failed`", EXIT_INCOMPLETE
    )
    assert ui.told[0].sentence == "checked 4 media URL(s) of 2 job(s): 1 job(s) with a problem"
    assert ui.labels == ["checking media", "submitting"]
    assert set(emulator.accepted()) == {"good"}
    assert store.rows(reference_ids=["bad"])[0].error == "preflight: video: HTTP 404"


# -- the command line's side ----------


@pytest.mark.parametrize(
    ("ending", "quiet", "shown"),
    [
        (Ending("all done", routine=True), False, "all done\n"),
        (Ending("all done", routine=True), True, ""),
        (Ending("5 failed remotely", EXIT_INCOMPLETE, routine=True), True, ""),
        (Ending("halted — resume", EXIT_INCOMPLETE), True, "halted — resume\n"),
        (Ending("interrupted: x", EXIT_INTERRUPTED), True, "interrupted: x\n"),
        (
            Ending("2 problems", EXIT_USAGE, is_error=True, details=("a", "b")),
            True,
            "error: a\nerror: b\nerror: 2 problems\n",
        ),
    ],
)
def test_how_an_ending_is_shown(ending: Ending, quiet: bool, shown: str) -> None:
    @click.command()
    @COMMON_OPTIONS
    def command() -> None:
        end(ending)

    result = CliRunner().invoke(command, ["-q"] if quiet else [])
    assert result.exit_code == ending.code
    assert (result.stdout, result.stderr) == ("", shown)


def imported(path: Path) -> set[str]:
    """The modules a source file imports (`from package import module` counted as the module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_layers_stay_apart() -> None:
    package = Path(__file__).parent.parent / "dubrunner"
    assert not {name for name in imported(package / "sessions.py") if name.startswith("click")}
    for module in (package / "cli").glob("*.py"):
        if module.name == "__init__.py":  # it gathers the commands
            continue
        # Commands import common alone; common builds on guide (--help, completion) and params
        # (option groups and types), leaves, on ending (how a command ends), a leaf, and on ondone
        # (--on-done), built on params.
        allowed = {
            "common.py": (
                "dubrunner.cli.guide",
                "dubrunner.cli.params",
                "dubrunner.cli.ondone",
                "dubrunner.cli.ending",
            ),
            "ending.py": ("-",),
            "guide.py": ("-",),
            "params.py": ("-",),
            "ondone.py": ("dubrunner.cli.params",),
        }.get(module.name, ("dubrunner.cli.common",))
        others = {
            name
            for name in imported(module)
            if name.startswith("dubrunner.cli.") and not name.startswith(allowed)
        }
        assert not others, f"{module.name} imports {others}"


def test_failures_are_not_counted_as_progress(store: Store) -> None:
    # Failed before: "submitting 3/5 · failed 3" with none submitted.
    from tests.fakeapi import FakeApi, client_for

    fake = FakeApi()
    fake.modes.extend(["500_not_created_no_retry"] * 2)
    store.load(
        "b", [JobSpec(f"r{i}", f"https://v/{i}", f"https://a/{i}", False, i) for i in range(3)], "m"
    )
    ui = FakeUi()
    options = WorkerOptions(concurrency=1, backoff_base=0.01, lookup_grace=0.0, max_attempts=1)
    submit_pending(store, client_for(fake), "b", options, ui)
    completed, detail = ui.updates[-1]
    assert store.counts() == {"submitted": 1, "failed": 2}
    assert completed == 1
    assert detail.startswith("submitted 1 · failed 2 · pending 0")


def test_a_lone_worker_waiting_for_a_look_up_says_so(
    emulator: Emulator, store: Store, api: ApiClient, tmp_path: Path
) -> None:
    # Before: a single worker waiting for the look-up grace of its own job said "waiting for
    # jobs other workers hold" (there were none).
    emulator.update(p504_create=1.0, create_delay=0.5)
    options = WorkerOptions(concurrency=1, backoff_base=0.01, lookup_grace=1.5)
    ui = FakeUi()
    manifest = manifest_of(tmp_path, 1)
    store.load(manifest.batch, manifest.jobs, "m")
    ending = submit_pending(store, api, "b", options, ui)
    assert ending.code == 0 and store.counts() == {"submitted": 1}
    said = {detail.partition(" · waiting for ")[2] for _, detail in ui.updates}
    assert "jobs to look up after --lookup-grace" in said
    assert "jobs other workers hold" not in said
    assert {ref: len(ids) for ref, ids in emulator.accepted().items()} == {"b-ep00000": 1}
