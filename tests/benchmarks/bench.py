"""`make bench`: dubrunner against the emulator on loopback, beside a bare httpx + sqlite3 loop.

Prints a table and writes BENCHMARKS.md (`--uploads-only`: the upload rows alone, printed, the
file left as it is). Every dubrunner figure comes from the real command run as a subprocess (wall
time, user+sys CPU and peak RSS from wait4); the emulator runs in a process of its own. Not a
test: nothing here asserts a time.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import clean_env

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "bench-token"


@dataclass
class Run:
    wall: float
    cpu: float
    rss_mb: float
    code: int
    err: str


def run(args: list[str], env: dict[str, str], cwd: Path) -> Run:
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dubrunner", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(
        time.monotonic() - started,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        proc.returncode,
        err[-2000:],
    )


class EmulatorProcess:
    def __init__(self, workdir: Path, *knobs: str) -> None:
        port_file = workdir / f"port-{time.monotonic_ns()}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dubrunner",
                "emulator",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--token",
                TOKEN,
                *knobs,
            ],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text()):
            if time.monotonic() > deadline:
                raise RuntimeError("the emulator did not start")
            time.sleep(0.05)
        self.root = f"http://127.0.0.1:{port_file.read_text()}/"
        self.base_url = self.root + "api/"

    def stats(self) -> dict[str, object]:
        with urllib.request.urlopen(self.root + "_emulator/stats") as resp:
            data: dict[str, object] = json.load(resp)
            return data

    def paced(self, skip: float = 0.0) -> tuple[float, int, int]:
        """From when each request reached the rate limit, after the first `skip` seconds:
        (requests let through a second, first to last; requests answered 429; requests)."""
        with urllib.request.urlopen(self.root + "_emulator/arrivals") as resp:
            arrivals = sorted(json.load(resp))
        start = arrivals[0][0] + skip
        seen = [(t, ok) for t, ok in arrivals if t >= start]
        taken = [t for t, ok in seen if ok]
        refused = len(seen) - len(taken)
        return (len(taken) - 1) / (taken[-1] - taken[0]), refused, len(seen)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def manifest(path: Path, n: int, batch: str) -> Path:
    with path.open("w") as f:
        f.write(f"batch: {batch}\njobs:\n")
        for i in range(n):
            f.write(
                f"  - reference_id: {batch}-{i:06d}\n"
                f"    video: https://cdn.example.com/{batch}/{i}/master.mp4\n"
                f"    audio: https://cdn.example.com/{batch}/{i}/dub-ja.wav?X-Amz-Signature=ab{i}\n"
            )
    return path


def sheet(path: Path, n: int, batch: str) -> Path:
    """The jobs of `manifest` as a CSV (by the name's .csv) or JSON Lines file."""
    with path.open("w") as f:
        if path.suffix == ".csv":
            f.write("reference_id,video,audio\n")
        for i in range(n):
            ref = f"{batch}-{i:06d}"
            video = f"https://cdn.example.com/{batch}/{i}/master.mp4"
            audio = f"https://cdn.example.com/{batch}/{i}/dub-ja.wav?X-Amz-Signature=ab{i}"
            if path.suffix == ".csv":
                f.write(f"{ref},{video},{audio}\n")
            else:
                f.write(json.dumps({"reference_id": ref, "video": video, "audio": audio}) + "\n")
    return path


def manifest_rows(
    work: Path,
    env: dict[str, str],
    add: Add,
    n: int,
    kinds: tuple[str, ...],
    yaml_cpu: float | None = None,
) -> None:
    """`load` of the same n jobs as a CSV, JSONL (and YAML) manifest, each into a new database:
    the spreadsheet readers beside the YAML one. The CPU each took, as a fraction of YAML's in
    the same run, holds on a busy machine too, where the walls do not."""
    for kind in kinds:
        path = work / f"sheet.{kind}"
        (manifest if kind == "yaml" else sheet)(path, n, "sheet")
        r = run(["load", str(path)], {**env, "DUBRUNNER_DB": str(work / f"sheet-{kind}.db")}, work)
        assert r.code == 0, r.err
        if kind == "yaml":
            yaml_cpu = r.cpu
        what = f"load {n:,}-job {kind.upper()} manifest"
        add(f"{what}: wall", f"{r.wall:.2f} s", "< 5 s", r.wall < 5)
        add(f"{what}: peak RSS", f"{r.rss_mb:.0f} MB", "< 250 MB", r.rss_mb < 250)
        if kind != "yaml" and yaml_cpu:
            ratio = r.cpu / yaml_cpu
            add(f"  {kind} / YAML: CPU (user+sys), same run", f"{ratio:.2f}", "<= 1", ratio <= 1)


BARE_LOOP = r"""
import sqlite3, sys, threading, time, httpx
base, db, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
conn = sqlite3.connect(db)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, ref TEXT, request_id TEXT)")
conn.executemany("INSERT INTO jobs (ref) VALUES (?)", [(f"bare-{i}",) for i in range(n)])
conn.commit()
client = httpx.Client(base_url=base, headers={"Authorization": "Bearer bench-token"},
                      limits=httpx.Limits(max_connections=threads))
lock = threading.Lock()
next_id = [0]
def work():
    db_conn = sqlite3.connect(db, timeout=60, check_same_thread=False)
    db_conn.execute("PRAGMA synchronous=NORMAL")
    while True:
        with lock:
            next_id[0] += 1
            i = next_id[0]
        if i > n:
            return
        r = client.post("v1/lipsync/generate", json={"inputs": [
            {"type": "video", "url": f"https://c/{i}.mp4"}, {"type": "audio", "url": f"https://c/{i}.wav"}],
            "reference_id": f"bare-{time.time_ns()}-{i}"})
        db_conn.execute("UPDATE jobs SET request_id = ? WHERE id = ?", (r.json()["request_id"], i))
        db_conn.commit()
start = time.monotonic()
ts = [threading.Thread(target=work) for _ in range(threads)]
[t.start() for t in ts]
[t.join() for t in ts]
print(time.monotonic() - start)
"""


def bare_loop(base_url: str, workdir: Path, n: int, threads: int) -> tuple[float, float]:
    """(jobs/s, CPU ms per job) of the brief's calibration loop, measured here and now."""
    db = workdir / f"bare-{time.monotonic_ns()}.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE_LOOP, base_url, str(db), str(n), str(threads)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    wall = float(proc.stdout.read().strip())
    _, _, usage = os.wait4(proc.pid, 0)
    return n / wall, (usage.ru_utime + usage.ru_stime) / n * 1000


BARE_UPLOAD = r"""
import sys, time, httpx
base, video, audio = sys.argv[1], sys.argv[2], sys.argv[3]
start = time.monotonic()
with open(video, "rb") as v, open(audio, "rb") as a:
    r = httpx.post(base + "v1/lipsync/generate-with-media", headers={"x-api-key": "bench-token"},
                   files={"video": ("v.mp4", v, "video/mp4"), "audio": ("a.wav", a, "audio/wav")},
                   data={"reference_id": f"bare-upload-{time.time_ns()}"}, timeout=600)
assert r.status_code == 200, r.text
print(time.monotonic() - start)
"""


def bench_uploads(work: Path, env: dict[str, str], add: Add, size: int) -> None:
    """Peak RSS and throughput of one local pair of `size` bytes uploaded by `dubrunner submit`
    (the upload's own time from its attempt row), beside a bare httpx streamed upload (httpx's
    own multipart encoder, files=) of the same files in the same run."""
    from tests import mediafiles

    folder = work / "upload"
    audio = mediafiles.audio(folder / "a.wav", 1024 * 1024)
    video = mediafiles.video(folder / "v.mp4", size - 1024 * 1024, sparse=True)
    (folder / "m.yaml").write_text("batch: up\njobs:\n  - {video: v.mp4, audio: a.wav}\n")
    emu = EmulatorProcess(work, "--complete-after", "3600")
    db = work / "up.db"
    env_up = {**env, "CHAMELAION_BASE_URL": emu.base_url, "DUBRUNNER_DB": str(db)}
    try:
        r = run(["submit", str(folder / "m.yaml"), "-q"], env_up, work)
        assert r.code == 0, r.err
        import sqlite3

        with sqlite3.connect(db) as conn:
            [(ms,)] = conn.execute("SELECT duration_ms FROM attempts WHERE kind = 'generate'")
        proc = subprocess.Popen(
            [sys.executable, "-c", BARE_UPLOAD, emu.base_url, str(video), str(audio)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        bare_s = float(proc.stdout.read().strip())
        _, _, usage = os.wait4(proc.pid, 0)
    finally:
        emu.stop()
    gib = size / 1024**3
    add(
        f"upload a {gib:g} GiB local pair (submit): peak RSS",
        f"{r.rss_mb:.0f} MB",
        "< 150 MB",
        r.rss_mb < 150,
    )
    ours = size / 1e6 / (ms / 1000)
    bare = size / 1e6 / bare_s
    add("  upload throughput on loopback (the POST itself)", f"{ours:.0f} MB/s")
    add("  bare httpx streamed upload (files=), same files", f"{bare:.0f} MB/s")
    add("  dubrunner / bare upload", f"{ours / bare:.2f}")
    add("  bare upload: peak RSS", f"{usage.ru_maxrss / 1024:.0f} MB")
    add("  the whole submit (start-up, SHA-256 of the files, upload)", f"{r.wall:.1f} s")


Add = Callable[..., None]


STARTUP_RUNS = 9  # the median of these is shown


def startup(add: Callable[..., None], work: Path) -> None:
    """Start-up times of the real command (`python -m dubrunner`, as the installed script starts
    it), the median of STARTUP_RUNS, beside the interpreter's own."""

    def median_wall(argv: list[str], env: dict[str, str]) -> float:
        walls = []
        for _ in range(STARTUP_RUNS):
            started = time.monotonic()
            subprocess.run(argv, env=env, cwd=work, capture_output=True, check=False)
            walls.append(time.monotonic() - started)
        return sorted(walls)[len(walls) // 2]

    env = clean_env(DUBRUNNER_DB=str(work / "empty.db"))
    subprocess.run(
        [sys.executable, "-m", "dubrunner", "db", "upgrade"], env=env, cwd=work, check=True
    )
    dubrunner = [sys.executable, "-m", "dubrunner"]
    bare = median_wall([sys.executable, "-c", "pass"], env)
    add("start-up: `python -c pass` (the floor)", f"{bare * 1000:.0f} ms")
    orm = median_wall([sys.executable, "-c", "import sqlalchemy.orm"], env)
    add("start-up: `python -c 'import sqlalchemy.orm'`", f"{orm * 1000:.0f} ms")
    for what, argv, extra, target in (
        ("start-up: `dubrunner --help`", [*dubrunner, "--help"], {}, 0.15),
        (
            "start-up: one TAB of shell completion",
            dubrunner,
            {
                "_DUBRUNNER_COMPLETE": "bash_complete",
                "COMP_WORDS": "dubrunner st",
                "COMP_CWORD": "1",
            },
            0.15,
        ),
        ("start-up: `dubrunner status`, empty database", [*dubrunner, "status"], {}, 0.3),
    ):
        wall = median_wall(argv, {**env, **extra})
        add(what, f"{wall * 1000:.0f} ms", f"< {target * 1000:.0f} ms", wall < target)
    # Beside it, `status` where there are jobs: through SQLAlchemy (see dbfile.SqliteFile).
    one = clean_env(DUBRUNNER_DB=str(work / "one.db"))
    subprocess.run(
        [*dubrunner, "load", str(manifest(work / "one.yaml", 1, "one"))],
        env=one,
        cwd=work,
        check=True,
        capture_output=True,
    )
    wall = median_wall([*dubrunner, "status"], one)
    add("start-up: `dubrunner status`, one job", f"{wall * 1000:.0f} ms")


def requests_endpoint_calls(emu: EmulatorProcess) -> int:
    counted = emu.stats()["by_endpoint"]
    assert isinstance(counted, dict)
    return int(counted.get("list", 0)) + int(counted.get("get", 0))


def poll_rows(emu: EmulatorProcess, env: dict[str, str], work: Path, n: int, add: Add) -> None:
    """One poll round of `n` open jobs: its requests to the API per job, and its speed."""
    before = requests_endpoint_calls(emu)
    others = int(emu.stats()["accepted"]) - n  # type: ignore[call-overload]
    r = run(["poll", "--concurrency", "32"], env, work)
    assert r.code == 0, r.err
    per_job = (requests_endpoint_calls(emu) - before) / n
    newer = f", {others:,} newer requests of others" if others else ""
    add(
        f"poll {n:,} open jobs{newer}: requests per open job per round",
        f"{per_job:.3f}",
        "<= 0.02",
        per_job <= 0.02,
    )
    add("  before: one GET per job per round", "1.000")
    add(f"poll {n:,} jobs (one round), whole command", f"{r.wall:.2f} s")
    r = run(["poll", "--concurrency", "32"], env, work)
    assert r.code == 0, r.err
    add(f"  again, nothing new to record: {n:,} jobs", f"{r.wall:.2f} s")


def poll_alone(quick: bool, add: Add) -> None:
    """`python -m tests.benchmarks.bench --only poll`: the poll rows alone (nothing written)."""
    n = 2_000 if quick else 5_000
    with tempfile.TemporaryDirectory(prefix="dubrunner-bench-") as tmp:
        work = Path(tmp)
        emu = EmulatorProcess(work, "--complete-after", "3600")
        env = clean_env(
            CHAMELAION_API_KEY=TOKEN,
            CHAMELAION_BASE_URL=emu.base_url,
            DUBRUNNER_DB=str(work / "p.db"),
        )
        try:
            r = run(
                ["submit", str(manifest(work / "p.yaml", n, "p")), "--concurrency", "32"], env, work
            )
            assert r.code == 0, r.err
            poll_rows(emu, env, work, n, add)
        finally:
            emu.stop()


def main() -> int:
    """`--quick`: smaller sizes. `--only rate|poll|uploads|startup|manifests`: those rows alone,
    printed and not written to BENCHMARKS.md (which keeps every row of a whole run)."""
    quick = "--quick" in sys.argv
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv[:-1] else None
    if only not in (None, "rate", "poll", "uploads", "startup", "manifests"):
        print(
            f"--only takes rate, poll, uploads, startup or manifests, not {only!r}",
            file=sys.stderr,
        )
        return 2
    rows: list[tuple[str, str, str, str]] = []  # what, measured, target, verdict

    def add(what: str, value: str, target: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("met" if ok else "MISSED")
        rows.append((what, value, target, verdict))
        print(f"{what:58} {value:>22}  {target:>14}  {verdict}", flush=True)

    if only is not None:
        # One part alone, printed only: BENCHMARKS.md is written by the whole run, never a part.
        with tempfile.TemporaryDirectory(prefix="dubrunner-bench-") as tmp:
            work = Path(tmp)
            if only == "rate":
                env = clean_env(CHAMELAION_API_KEY=TOKEN, DUBRUNNER_DB=str(work / "bench.db"))
                rate_rows(work, env, add, quick)
            elif only == "uploads":
                env = clean_env(CHAMELAION_API_KEY=TOKEN)
                bench_uploads(work, env, add, 256 * 1024**2 if quick else 1024**3)
            elif only == "startup":
                startup(add, work)
            elif only == "manifests":
                n = 20_000 if quick else 100_000
                manifest_rows(work, clean_env(), add, n, ("yaml", "csv", "jsonl"))
            else:
                poll_alone(quick, add)
        print("\n(--only: BENCHMARKS.md is not written)")
        return 0

    n_big = 20_000 if quick else 100_000
    n_submit = 2_000 if quick else 5_000
    with tempfile.TemporaryDirectory(prefix="dubrunner-bench-") as tmp:
        work = Path(tmp)
        startup(add, work)  # first, on a quiet machine
        env = clean_env(CHAMELAION_API_KEY=TOKEN, DUBRUNNER_DB=str(work / "bench.db"))

        # 1. Load + validate a large manifest.
        big = manifest(work / "big.yaml", n_big, "big")
        r = run(["load", str(big)], env, work)
        assert r.code == 0, r.err
        add(f"load {n_big:,}-job manifest: wall", f"{r.wall:.2f} s", "< 5 s", r.wall < 5)
        add(
            f"load {n_big:,}-job manifest: peak RSS",
            f"{r.rss_mb:.0f} MB",
            "< 250 MB",
            r.rss_mb < 250,
        )
        manifest_rows(work, env, add, n_big, ("csv", "jsonl"), r.cpu)  # spreadsheets beside

        # 2. status summary on those rows (in-process: the query, not Python's start-up).
        sys.path.insert(0, str(ROOT))
        from dubrunner.store import Store

        store = Store(str(work / "bench.db"))
        started = time.monotonic()
        store.summary()
        summary_s = time.monotonic() - started
        store.close()
        add(
            f"status summary on {n_big:,} rows",
            f"{summary_s * 1000:.0f} ms",
            "< 500 ms",
            summary_s < 0.5,
        )
        r = run(["status", "--limit", "20"], env, work)
        add("`dubrunner status` command, whole (start-up included)", f"{r.wall:.2f} s")

        # 3. Submit throughput at 20 ms latency, concurrency 32, beside the bare loop.
        emu = EmulatorProcess(work, "--latency-ms", "20", "--complete-after", "3600")
        env_emu = {**env, "CHAMELAION_BASE_URL": emu.base_url, "DUBRUNNER_DB": str(work / "s.db")}
        run(["load", str(manifest(work / "s.yaml", n_submit, "s"))], env_emu, work)
        r = run(["resume", "--concurrency", "32"], env_emu, work)
        assert r.code == 0, r.err
        ours = n_submit / r.wall
        cpu_ms = r.cpu / n_submit * 1000
        bare_rate, bare_cpu = bare_loop(emu.base_url, work, n_submit, 32)
        ideal = 32 / 0.020
        add("submit at 20 ms latency, concurrency 32", f"{ours:.0f} jobs/s", ">= 600", ours >= 600)
        add(
            "  as a fraction of the ideal concurrency/latency", f"{ours / ideal:.2f} of {ideal:.0f}"
        )
        add("  bare httpx + sqlite3 loop, same run", f"{bare_rate:.0f} jobs/s")
        add("  dubrunner / bare loop", f"{ours / bare_rate:.2f}", ">= 0.6", ours / bare_rate >= 0.6)
        add(
            "client CPU per submitted job (whole process)",
            f"{cpu_ms:.2f} ms",
            "< 1.5 ms",
            cpu_ms < 1.5,
        )
        add("  bare loop CPU per job", f"{bare_cpu:.2f} ms")

        # 4. A poll round on those jobs: pages of the list, not one GET each.
        poll_rows(emu, env_emu, work, n_submit, add)
        emu.stop()

        rate_rows(work, env, add, quick)

        # 5c. Uploading local files: memory and throughput.
        bench_uploads(work, env, add, 256 * 1024**2 if quick else 1024**3)

        # 6. A whole large batch, for memory.
        if not quick:
            emu = EmulatorProcess(work, "--complete-after", "3600")
            env_big = {**env, "CHAMELAION_BASE_URL": emu.base_url}
            r = run(["resume", "--concurrency", "32", "-q"], env_big, work)
            emu.stop()
            assert r.code == 0, r.err
            add(
                f"submit the {n_big:,}-job batch: peak RSS",
                f"{r.rss_mb:.0f} MB",
                "< 250 MB",
                r.rss_mb < 250,
            )
            add(
                f"submit the {n_big:,}-job batch: throughput (no latency)",
                f"{n_big / r.wall:.0f} jobs/s",
            )

        # 7. The report of a 10,000-job history, as HTML (tests/benchmarks/report_bench.py).
        from tests.benchmarks.report_bench import measure as report_measure

        report_measure(add, work)

    write_report(rows, quick)
    return 0


def rate_rows(work: Path, env: dict[str, str], add: Add, quick: bool) -> None:
    """Rate adherence: against a lenient limiter, against a strict one (a token bucket of
    capacity 1: any request arriving less than 1/R after the last one it let through is
    refused), and --rate auto against both."""
    # 5. The server allows 20 req/s (and a second's worth at once), the client is told 20.
    emu = EmulatorProcess(work, "--rate", "20")
    n_rate = 100 if quick else 300
    env_rate = {**env, "CHAMELAION_BASE_URL": emu.base_url, "DUBRUNNER_DB": str(work / "r.db")}
    run(["load", str(manifest(work / "r.yaml", n_rate, "r"))], env_rate, work)
    r = run(["resume", "--rate", "20", "--concurrency", "8"], env_rate, work)
    assert r.code == 0, r.err
    stats = emu.stats()
    span = float(stats["last_generate_at"]) - float(stats["first_generate_at"])  # type: ignore[arg-type]
    achieved = (int(stats["generate"]) - 1) / span  # type: ignore[call-overload]
    refused = int(stats["rate_limited"])  # type: ignore[call-overload]
    requests = int(stats["requests"])  # type: ignore[call-overload]
    emu.stop()
    add(
        "lenient limiter (20 req/s, burst 20), --rate 20: achieved / allowed",
        f"{achieved / 20:.3f}",
        ">= 0.95",
        achieved / 20 >= 0.95,
    )
    add("  the same over the whole command, start-up included", f"{n_rate / r.wall / 20:.3f}")
    add(
        "  requests answered 429",
        f"{refused} of {requests} ({refused / requests:.1%})",
        "< 1 %",
        refused / requests < 0.01,
    )

    # 5b. --rate auto against the same limit: it has to find it.
    emu = EmulatorProcess(work, "--rate", "20")
    env_auto = {**env, "CHAMELAION_BASE_URL": emu.base_url, "DUBRUNNER_DB": str(work / "a.db")}
    run(["load", str(manifest(work / "a.yaml", n_rate, "a"))], env_auto, work)
    r = run(["resume", "--rate", "auto", "--concurrency", "8"], env_auto, work)
    assert r.code == 0, r.err
    stats = emu.stats()
    emu.stop()
    span = float(stats["last_generate_at"]) - float(stats["first_generate_at"])  # type: ignore[arg-type]
    found = (int(stats["generate"]) - 1) / span  # type: ignore[call-overload]
    refused = int(stats["rate_limited"])  # type: ignore[call-overload]
    add("--rate auto, lenient limiter (20 req/s): achieved / allowed", f"{found / 20:.3f}")
    add("  requests answered 429", f"{refused} ({refused / (refused + n_rate):.1%})")

    # 5c. The same against a strict limiter: --burst 1, judged by when requests arrive.
    emu = EmulatorProcess(work, "--rate", "20", "--burst", "1")
    env_strict = {**env, "CHAMELAION_BASE_URL": emu.base_url, "DUBRUNNER_DB": str(work / "b.db")}
    run(["load", str(manifest(work / "b.yaml", n_rate, "b"))], env_strict, work)
    r = run(["resume", "--rate", "20", "--concurrency", "8"], env_strict, work)
    assert r.code == 0, r.err
    achieved, refused, total = emu.paced()
    emu.stop()
    add(
        "strict limiter (20 req/s, burst 1), --rate 20: achieved / allowed",
        f"{achieved / 20:.3f}",
        ">= 0.95",
        achieved / 20 >= 0.95,
    )
    add(
        "  requests answered 429",
        f"{refused} of {total} ({refused / total:.1%})",
        "< 1 %",
        refused / total < 0.01,
    )

    # 5d. --rate auto against a strict limit it is not told: measured after its first 10 s.
    n_auto = 300 if quick else 500
    emu = EmulatorProcess(work, "--rate", "20", "--burst", "1")
    env_find = {**env, "CHAMELAION_BASE_URL": emu.base_url, "DUBRUNNER_DB": str(work / "f.db")}
    run(["load", str(manifest(work / "f.yaml", n_auto, "f"))], env_find, work)
    r = run(["resume", "--rate", "auto", "--concurrency", "8"], env_find, work)
    assert r.code == 0, r.err
    achieved, refused, total = emu.paced(skip=10.0)
    emu.stop()
    add(
        "--rate auto, strict limiter (20 req/s, burst 1): achieved / allowed after 10 s",
        f"{achieved / 20:.3f}",
        ">= 0.9",
        achieved / 20 >= 0.9,
    )
    add(
        "  requests answered 429 after the first 10 s",
        f"{refused} of {total} ({refused / total:.1%})",
        "< 2 %",
        refused / total < 0.02,
    )


def write_report(rows: list[tuple[str, str, str, str]], quick: bool) -> None:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (tests/benchmarks/bench.py); "
        + ("a --quick run, with smaller sizes. " if quick else "")
        + "Client and emulator on one machine, over loopback.",
        "",
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
        f"{platform.release()}",
        f"- Python {platform.python_version()}; peak RSS of this run's driver "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| measure | result | target | |",
        "| --- | ---: | ---: | --- |",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
    ]
    notes = ROOT / "tests" / "benchmarks" / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text()]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines))
    print(f"\nwrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    raise SystemExit(main())
