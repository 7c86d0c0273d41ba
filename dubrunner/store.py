"""The only module that runs SQL: load, claim, record outcomes, leases, summaries.

Every write is one short transaction, and every transition of a claimed job is guarded where the
data lives (`WHERE id = :id AND state = 'submitting' AND owner = :me`): zero rows means someone else
moved the job, and the caller drops it. No transaction is ever open across an HTTP call.
"""

from __future__ import annotations

import functools
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from dubrunner.manifest import JobSpec
from dubrunner.models import Attempt, Job, RateBudget
from dubrunner.states import AT_API, POLLABLE, State

DEFAULT_DB = "sqlite:///./dubrunner.db"
# The newest migration. Checked against Alembic by a test; it lets an up-to-date database skip
# loading Alembic and its scripts on every start.
SCHEMA_HEAD = "0005"
T = TypeVar("T")
_CHUNK = 500
# States from which a job whose manifest entry changed may take the new values, provided it was
# never sent (or sent and refused) and nobody holds it: see _NEVER_SENT.
_CHANGEABLE = frozenset({State.PENDING, State.HALTED, State.FAILED, State.CANCELLED})
# "The API holds no request for this job and no worker is about to send it", as SQL.
_NEVER_SENT = (
    sa.or_(*(Job.state == state for state in sorted(_CHANGEABLE))),
    Job.owner.is_(None),
    Job.request_id.is_(None),
    Job.lookup_needed.is_(False),
)


class StoreError(Exception):
    """The database cannot be used (unreachable, locked, not a dubrunner database...)."""


class LoadConflict(Exception):
    """The manifest contradicts what the database already holds; nothing was written."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(problems[0])


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def database_url(value: str | None) -> str:
    """A SQLAlchemy URL from `--db`: a URL as it is, anything else is a SQLite file path."""
    if not value:
        return DEFAULT_DB
    if "://" in value:
        return value
    return "sqlite:///" + str(Path(value).expanduser().absolute())


@dataclass(frozen=True, slots=True)
class Lease:
    """How long a claim holds, derived from the request timeout R: the time within which the
    server is assumed to act on a POST it received, if it ever does.

    - A POST leaves only inside a *send window*: right after its worker re-confirmed, in the
      database, that it still owns the job (`Store.confirm_send`), and at most `window` seconds
      later (checked right before the first byte, on a clock that keeps counting while the
      machine is suspended). The confirmation sets `settle_at` = then + window + R: from then
      on a look-up by reference_id tells the truth about every POST that owner made.
    - `lease_expires` is the last renewal + 2R (renewed every `heartbeat`), always later than
      `settle_at`. From then anyone may reclaim the job, and looks it up before sending it.
    - A claim sets `settle_at` to the moment of the claim (nothing was sent yet), so the jobs of a
      worker on this host that is provably dead are reclaimed at once when it never sent them,
      and at their settle time when it did.
    """

    request_timeout: float = 60.0

    @property
    def heartbeat(self) -> float:
        return max(0.05, self.request_timeout / 6)

    @property
    def window(self) -> float:
        """How long after the confirmation of ownership a POST may still leave."""
        return self.heartbeat

    @property
    def seconds(self) -> float:
        return 2 * self.request_timeout

    def claimed(self, now: float) -> dict[str, float]:
        return {"lease_expires": now + self.seconds, "settle_at": now}

    def renewed(self, now: float) -> dict[str, float]:
        return {"lease_expires": now + self.seconds}

    def confirmed(self, now: float) -> dict[str, float]:
        return {
            "lease_expires": now + self.seconds,
            "settle_at": now + self.window + self.request_timeout,
        }


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: int
    reference_id: str
    video_url: str
    audio_url: str
    disable_asd: bool
    lookup_needed: bool
    attempts: int
    lookup_after: float | None  # a "not found" before this moment proves nothing (Unix time)
    tries: int  # POSTs so far that count against --max-attempts


@dataclass(frozen=True, slots=True)
class PollTarget:
    id: int
    reference_id: str
    request_id: str


@dataclass(frozen=True, slots=True)
class FetchTarget:
    id: int
    batch: str
    reference_id: str
    output_url: str
    download_state: str | None
    local_path: str | None
    size_bytes: int | None
    sha256: str | None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    kind: str  # generate | lookup
    outcome: str
    http_status: int | None
    error: str | None
    duration_ms: int | None
    request_id: str | None = None


@dataclass(slots=True)
class LoadPlan:
    batch: str
    new: list[JobSpec] = field(default_factory=list)
    changed: list[tuple[int, JobSpec]] = field(default_factory=list)
    unchanged: int = 0
    already_submitted: int = 0  # among unchanged: the API already holds them
    to_send: int = 0  # what a run would send: new + changed + unchanged not yet at the API


@dataclass(frozen=True, slots=True)
class JobRow:
    """A job as shown to people and scripts."""

    batch: str
    reference_id: str
    state: str
    request_id: str | None
    error: str | None
    http_status: int | None
    attempts: int
    video_url: str
    audio_url: str
    disable_asd: bool
    source: str | None
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    owner: str | None
    lookup_needed: bool
    remote_status: str | None
    remote_error: str | None
    output_url: str | None
    remote_started_at: str | None
    remote_finished_at: str | None
    download_state: str | None
    download_error: str | None
    local_path: str | None
    size_bytes: int | None
    sha256: str | None


_ROW_COLUMNS = (
    Job.batch,
    Job.reference_id,
    Job.state,
    Job.request_id,
    Job.last_error,
    Job.last_http_status,
    Job.attempts,
    Job.video_url,
    Job.audio_url,
    Job.disable_asd,
    Job.source,
    Job.created_at,
    Job.updated_at,
    Job.submitted_at,
    Job.owner,
    Job.lookup_needed,
    Job.remote_status,
    Job.remote_error,
    Job.output_url,
    Job.remote_started_at,
    Job.remote_finished_at,
    Job.download_state,
    Job.download_error,
    Job.local_path,
    Job.size_bytes,
    Job.sha256,
)
_CLAIM_COLUMNS = (
    Job.id,
    Job.reference_id,
    Job.video_url,
    Job.audio_url,
    Job.disable_asd,
    Job.lookup_needed,
    Job.attempts,
    Job.lookup_after,
    Job.tries,
)


@dataclass(frozen=True, slots=True)
class _Update:
    """A one-row UPDATE (plus maybe an attempt row) that the group committer may run together
    with others of the same statement in one executemany. Its result: did the row move?"""

    stmt: sa.Update
    params: dict[str, Any]
    attempt: dict[str, Any] | None


class _Redo(Exception):
    """A batched UPDATE moved fewer rows than it had: redo the batch one write at a time."""


_Write = Callable[[Connection], Any] | _Update


class _GroupCommitter:
    """One writer thread per process: every write waiting in the queue goes into one transaction.

    Callers block until their write is committed, so each outcome is still durable the moment the
    caller moves on; but N threads cost one commit, and nobody sleeps on SQLite's write lock.
    """

    MAX_BATCH = 512
    LINGER = 0.002  # seconds to gather a batch: nothing next to a network round trip

    def __init__(self, store: Store) -> None:
        self.store = store
        self.queue: queue.SimpleQueue[tuple[_Write, Future[Any]] | None] = queue.SimpleQueue()
        # Attempt rows of the batch being committed: inserted with one executemany.
        self.attempt_rows: list[dict[str, Any]] | None = None
        self.conn: Connection | None = None
        self.fallbacks = 0  # batches redone one write at a time (a lost row, or an error)
        self.thread = threading.Thread(target=self._loop, name="db-writer", daemon=True)
        self.thread.start()

    def submit(self, write: _Write) -> Any:
        future: Future[Any] = Future()
        self.queue.put((write, future))
        return future.result()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        try:
            while True:
                first = self.queue.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                deadline = time.monotonic() + self.LINGER
                while len(batch) < self.MAX_BATCH:
                    try:
                        item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                self._commit(batch)
                if stop:
                    return
        finally:
            if self.conn is not None:
                self.conn.close()

    def _connection(self) -> Connection:
        if self.conn is None or self.conn.closed or self.conn.invalidated:
            self.conn = self.store.engine.connect()
        return self.conn

    def _commit(self, batch: list[tuple[_Write, Future[Any]]]) -> None:
        try:
            conn = self._connection()
            with conn.begin():
                self.attempt_rows = []
                results = self._run(conn, [w for w, _ in batch])
                if self.attempt_rows:
                    conn.execute(_INSERT_ATTEMPT, self.attempt_rows)
        except OperationalError as exc:
            self.conn = None
            for _, future in batch:
                future.set_exception(StoreError(_db_message(exc)))
            return
        except Exception:
            if len(batch) == 1:
                batch[0][1].set_exception(sys.exc_info()[1] or RuntimeError("write failed"))
                return
            self.fallbacks += 1
            for item in batch:  # one bad write (or a lost row) must not sink the others
                self._commit([item])
            return
        finally:
            self.attempt_rows = None
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)

    def _run(self, conn: Connection, writes: list[_Write]) -> list[Any]:
        results: list[Any] = [None] * len(writes)
        groups: dict[int, list[int]] = {}
        for i, write in enumerate(writes):
            if isinstance(write, _Update):
                groups.setdefault(id(write.stmt), []).append(i)
                if write.attempt is not None:
                    assert self.attempt_rows is not None
                    self.attempt_rows.append(write.attempt)
            else:
                results[i] = write(conn)
        for indexes in groups.values():
            updates = [writes[i] for i in indexes]
            stmt = updates[0].stmt  # type: ignore[union-attr]
            if len(indexes) == 1:
                results[indexes[0]] = conn.execute(stmt, updates[0].params).rowcount == 1  # type: ignore[union-attr]
                continue
            moved = conn.execute(stmt, [u.params for u in updates]).rowcount  # type: ignore[union-attr]
            if moved != len(indexes) or not conn.dialect.supports_sane_multi_rowcount:
                raise _Redo
            for i in indexes:
                results[i] = True
        return results


def _migrations_dir() -> Path:
    here = Path(__file__).resolve().parent
    packaged = here / "_migrations"  # a wheel install (see pyproject's force-include)
    return packaged if packaged.is_dir() else here.parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def migration_head() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Store:
    def __init__(self, url: str | None = None, *, pool_size: int = 5, migrate: bool = True) -> None:
        self.url = database_url(url)
        try:
            parsed = sa.engine.make_url(self.url)
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"not a database URL or path: {exc}") from None
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        # No SQL parameters in any exception text: they hold media URLs and their credentials.
        kwargs: dict[str, Any] = {
            "pool_size": pool_size,
            "max_overflow": pool_size,
            "hide_parameters": True,
        }
        if self.is_sqlite:
            database = parsed.database or ""
            if database in ("", ":memory:"):
                raise StoreError("an in-memory SQLite database cannot hold a batch; give a file")
            import sqlite3

            path = Path(database)
            _create_private_file(path)
            # Looked at before any connection of ours, which would switch the file to WAL: a
            # file of another program is refused and left exactly as it was.
            try:
                raw = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, timeout=60)
                try:
                    tables = [
                        name
                        for (name,) in raw.execute(
                            "SELECT name FROM sqlite_master WHERE type = 'table' "
                            "AND name NOT LIKE 'sqlite%' ORDER BY name"
                        )
                    ]
                finally:
                    raw.close()
            except sqlite3.Error:
                tables = []  # not a database at all, or unreadable: said on first use
            if tables and Job.__tablename__ not in tables:
                shown = ", ".join(tables[:3]) + (", …" if len(tables) > 3 else "")
                raise StoreError(
                    f"{path} is not a dubrunner database (it holds other tables: {shown}); "
                    "give another --db"
                )
            kwargs["connect_args"] = {"timeout": 60, "check_same_thread": False}
        try:
            self.engine: Engine = sa.create_engine(self.url, **kwargs)
        except (ImportError, sa.exc.ArgumentError) as exc:
            raise StoreError(f"cannot use {parsed.render_as_string()}: {exc}") from None
        if self.is_sqlite:
            _setup_sqlite(self.engine)
        self._committer: _GroupCommitter | None = None
        if migrate:
            self.upgrade()

    def start_group_commit(self) -> None:
        """From now on this process's frequent writes share commits (see _GroupCommitter)."""
        if self._committer is None:
            self._committer = _GroupCommitter(self)

    def close(self) -> None:
        if self._committer is not None:
            self._committer.close()
            self._committer = None
        self.engine.dispose()

    def _run_write(self, op: Callable[[Connection], T]) -> T:
        if self._committer is not None:
            return self._committer.submit(op)  # type: ignore[no-any-return]
        with self._write() as conn:
            return op(conn)

    def _run_update(self, write: _Update) -> bool:
        """A one-row UPDATE and its attempt row; batched with others under group commit."""
        if self._committer is not None:
            return bool(self._committer.submit(write))
        with self._write() as conn:
            moved = conn.execute(write.stmt, write.params).rowcount == 1
            if write.attempt is not None:
                conn.execute(_INSERT_ATTEMPT, write.attempt)
            return moved

    # -- transactions ----------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, so it never deadlocks on upgrade)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise StoreError(_db_message(exc)) from None

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                conn.execution_options(dubrunner_readonly=True)
                yield conn
        except OperationalError as exc:
            raise StoreError(_db_message(exc)) from None

    # -- schema ----------

    def current_revision(self) -> str | None:
        with self._read() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()

    def upgrade(self) -> tuple[str | None, str]:
        """Bring the schema to the newest migration; safe when several processes start at once."""
        try:
            current = self.current_revision()
        except SQLAlchemyError as exc:
            raise StoreError(_db_message(exc)) from None
        if current == SCHEMA_HEAD:
            return current, current
        if current is not None and current not in known_revisions():
            raise StoreError(
                f"this database was written by a newer dubrunner (revision {current}); "
                "upgrade dubrunner"
            )
        head = migration_head()
        from alembic import command

        try:
            with self._write() as conn:
                if not self.is_sqlite and conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(4242001)"))
                # Another process may have migrated while we waited for the lock.
                if _revision(conn) != head:
                    command.upgrade(alembic_config(conn), "head")
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot migrate the database: {_db_message(exc)}") from None
        return current, head

    # -- loading ----------

    def load(
        self, batch: str, specs: Sequence[JobSpec], source: str, *, dry_run: bool = False
    ) -> LoadPlan:
        """Add a manifest's jobs in one transaction: all of them, or (on a conflict) none."""
        try:
            return self._load(batch, specs, source, dry_run)
        except sa.exc.IntegrityError:
            # Only another writer inserting the same reference_ids at the same moment gets here
            # (loads take turns): say so, never the statement and its parameters.
            raise LoadConflict(
                [f"{source}: another process loaded some of these reference_ids at the same time"]
            ) from None

    def _load(self, batch: str, specs: Sequence[JobSpec], source: str, dry_run: bool) -> LoadPlan:
        plan = LoadPlan(batch=batch)
        conflicts: list[str] = []
        with self._write() as conn:
            if conn.dialect.name == "postgresql":
                # Two loads at once (of any batches: reference_ids are unique across all of them)
                # would both see shared jobs as new: loads take turns. SQLite's BEGIN IMMEDIATE
                # already serialises every writer.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(4242002)"))
            existing: dict[str, Any] = {}
            for chunk in _chunks([s.reference_id for s in specs]):
                for row in conn.execute(
                    select(
                        Job.id,
                        Job.reference_id,
                        Job.batch,
                        Job.video_url,
                        Job.audio_url,
                        Job.disable_asd,
                        Job.state,
                        Job.request_id,
                        Job.lookup_needed,
                        Job.owner,
                    ).where(Job.reference_id.in_(chunk))
                ):
                    existing[row.reference_id] = row
            for spec in specs:
                found = existing.get(spec.reference_id)
                if found is None:
                    plan.new.append(spec)
                    continue
                where = f"{source}:{spec.line}"
                if found.batch != batch:
                    conflicts.append(
                        f"{where}: reference_id {spec.reference_id!r} already belongs to batch "
                        f"{found.batch!r}; reference_ids are unique across the database"
                    )
                elif (found.video_url, found.audio_url, bool(found.disable_asd)) == (
                    spec.video_url,
                    spec.audio_url,
                    spec.disable_asd,
                ):
                    plan.unchanged += 1
                    if found.state in AT_API:
                        plan.already_submitted += 1
                    elif found.state in (State.PENDING, State.HALTED):
                        plan.to_send += 1
                elif (
                    found.state not in _CHANGEABLE
                    or found.owner is not None
                    or found.request_id
                    or found.lookup_needed
                ):
                    conflicts.append(
                        f"{where}: reference_id {spec.reference_id!r} was already sent to the "
                        f"API with other URLs or settings (state {found.state}); give the changed "
                        "job a new reference_id"
                    )
                else:
                    plan.changed.append((found.id, spec))
            if conflicts:
                raise LoadConflict(conflicts)
            plan.to_send += len(plan.new) + len(plan.changed)
            if dry_run:
                conn.rollback()
                return plan
            now = utcnow()
            for chunk in _chunks(plan.new, 5000):
                conn.execute(
                    insert(Job),
                    [
                        {
                            "batch": batch,
                            "reference_id": s.reference_id,
                            "video_url": s.video_url,
                            "audio_url": s.audio_url,
                            "disable_asd": s.disable_asd,
                            "source": f"{source}:{s.line}",
                            "state": State.PENDING,
                            "attempts": 0,
                            "tries": 0,
                            "lookup_needed": False,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for s in chunk
                    ],
                )
            lost: list[str] = []
            for job_id, spec in plan.changed:
                # Guarded where the data lives: a worker may have claimed the job since it was
                # read above (workers do not take the loads' lock). Changing a claimed job would
                # send it twice, with the old URLs and the new ones.
                moved = conn.execute(
                    update(Job)
                    .where(Job.id == job_id, *_NEVER_SENT)
                    .values(
                        video_url=spec.video_url,
                        audio_url=spec.audio_url,
                        disable_asd=spec.disable_asd,
                        source=f"{source}:{spec.line}",
                        state=State.PENDING,
                        tries=0,
                        last_error=None,
                        last_http_status=None,
                        updated_at=now,
                    )
                ).rowcount
                if moved != 1:
                    lost.append(
                        f"{source}:{spec.line}: reference_id {spec.reference_id!r} was taken by "
                        "a worker while loading; nothing was loaded — load again to see whether "
                        "it can still change"
                    )
            if lost:
                raise LoadConflict(lost)
        return plan

    # -- the worker's transitions ----------

    def reset_halted(self, batch: str | None) -> int:
        """Halted jobs go back to pending: the cause (tokens, a credential) was fixed meanwhile."""
        stmt = update(Job).where(Job.state == State.HALTED)
        if batch is not None:
            stmt = stmt.where(Job.batch == batch)
        with self._write() as conn:
            return conn.execute(stmt.values(state=State.PENDING, updated_at=utcnow())).rowcount

    def claim(self, owner: str, batch: str | None, limit: int, lease: Lease) -> list[ClaimedJob]:
        """Atomically take up to `limit` jobs: first those of dead workers, then pending ones.

        A job reclaimed from an expired lease comes with lookup_needed set: its POST may have
        landed, so the caller must ask the API by reference_id before sending it again.
        """
        now = time.time()
        lease_values = lease.claimed(now)
        params: dict[str, Any] = {
            "c_now": now,
            "c_owner": owner,
            "c_updated": utcnow(),
            "c_lease": lease_values["lease_expires"],
            "c_settle": lease_values["settle_at"],
            "c_batch": batch,
        }
        statements = _claim_statements(batch is not None)

        def op(conn: Connection) -> list[ClaimedJob]:
            claimed: list[ClaimedJob] = []
            for stmt in statements:
                room = limit - len(claimed)
                if room <= 0:
                    break
                rows = conn.execute(stmt, {**params, "c_room": room}).all()
                claimed.extend(ClaimedJob(*row) for row in rows)
            claimed.sort(key=lambda j: j.id)
            return claimed

        return self._run_write(op)

    def reserve_rate_slots(self, name: str, interval: float, n: int) -> list[float]:
        """Book the next `n` request times (Unix seconds) of a rate shared through the database."""
        now = time.time()
        span = n * interval
        stmt = (
            update(RateBudget)
            .where(RateBudget.name == name)
            .values(tat=sa.case((RateBudget.tat > now, RateBudget.tat), else_=now) + span)
            .returning(RateBudget.tat)
        )
        for _ in range(2):
            try:
                with self._write() as conn:
                    tat = conn.execute(stmt).scalar()
                    if tat is None:
                        conn.execute(insert(RateBudget).values(name=name, tat=now + span))
                        tat = now + span
            except sa.exc.IntegrityError:  # another worker created the row first: book again
                continue
            first = float(tat) - span
            return [first + i * interval for i in range(n)]
        raise StoreError("could not book a slot of the shared rate")

    def renew_leases(self, owner: str, lease: Lease) -> set[int]:
        """Extend the leases of every job this worker holds; the ids it still holds."""
        stmt = (
            update(Job)
            .where(Job.owner == owner, Job.state == State.SUBMITTING)
            .values(**lease.renewed(time.time()))
            .returning(Job.id)
        )
        return self._run_write(lambda conn: set(conn.execute(stmt).scalars()))

    def confirm_send(self, job_id: int, owner: str, lease: Lease, now: float) -> bool:
        """Right before a POST: is the job still ours? If so, its lease and settle time now
        cover a POST leaving within `lease.window` of `now` (see Lease). One atomic guarded
        UPDATE, so a worker that was paused past its lease cannot send a job someone else took."""
        values = lease.confirmed(now)
        return self._update_one("owned", job_id, dict(values), None, owner, owner=owner)

    def abandon_leases(self, owner: str, lease: Lease) -> int:
        """On the way out with requests maybe in flight: the next run looks them up once the
        server has had time to act on them."""
        settle = time.time() + lease.window + lease.request_timeout
        with self._write() as conn:
            return conn.execute(
                update(Job)
                .where(Job.owner == owner, Job.state == State.SUBMITTING)
                .values(lease_expires=settle, settle_at=settle, lookup_needed=True)
            ).rowcount

    def owners_of_submitting(self, batch: str | None) -> list[str]:
        stmt = select(Job.owner).where(Job.state == State.SUBMITTING, Job.owner.is_not(None))
        if batch is not None:
            stmt = stmt.where(Job.batch == batch)
        with self._read() as conn:
            return [o for o in conn.execute(stmt.distinct()).scalars() if o]

    def mark_owner_dead(self, owner: str) -> int:
        """A provably dead worker's jobs become reclaimable at their settle time."""
        with self._write() as conn:
            return conn.execute(
                update(Job)
                .where(Job.owner == owner, Job.state == State.SUBMITTING)
                .values(
                    lease_expires=sa.func.min(Job.lease_expires, Job.settle_at)
                    if self.is_sqlite
                    else sa.func.least(Job.lease_expires, Job.settle_at),
                    lookup_needed=True,
                )
            ).rowcount

    def soonest_reclaim(self, batch: str | None, exclude_owner: str) -> float | None:
        """When the next job that cannot be claimed now becomes claimable (Unix time): a job
        another worker holds, or one waiting for its look-up to mean something (lookup_after).
        None when there is no such job."""
        held = select(func.min(Job.lease_expires)).where(
            Job.state == State.SUBMITTING, Job.owner != exclude_owner
        )
        waiting = select(func.min(Job.lookup_after)).where(
            Job.state == State.PENDING, Job.lookup_after.is_not(None)
        )
        if batch is not None:
            held = held.where(Job.batch == batch)
            waiting = waiting.where(Job.batch == batch)
        with self._read() as conn:
            values = [conn.execute(held).scalar(), conn.execute(waiting).scalar()]
        present = [float(v) for v in values if v is not None]
        return min(present) if present else None

    def ended_requests(self, job_id: int) -> frozenset[str]:
        """The request_ids of this job that the API said ended badly: history, not the answer to
        a look-up for a new POST (the user retried the job after a remote failure)."""
        stmt = select(Attempt.request_id).where(
            Attempt.job_id == job_id,
            Attempt.kind == "poll",
            Attempt.outcome == State.FAILED,
            Attempt.request_id.is_not(None),
        )
        with self._read() as conn:
            return frozenset(r for r in conn.execute(stmt).scalars() if r)

    def transition(
        self,
        job_id: int,
        owner: str,
        attempt: AttemptRecord | None,
        worker: str,
        **values: Any,
    ) -> bool:
        """Move a job this worker holds, and log the attempt, in one commit.

        False when the job is no longer ours (a lease expired and someone reclaimed it).
        """
        if values.get("state", State.SUBMITTING) != State.SUBMITTING:
            values.setdefault("owner", None)
            values.setdefault("lease_expires", None)
            values.setdefault("settle_at", None)
        return self._update_one("owned", job_id, values, attempt, worker, owner=owner)

    def _update_one(
        self,
        guard: str,
        job_id: int,
        values: dict[str, Any],
        attempt: AttemptRecord | None,
        worker: str,
        owner: str | None = None,
    ) -> bool:
        """A guarded one-row UPDATE plus its attempt row (see _update_statement for guards)."""
        now = utcnow()
        values = {"updated_at": now, **values}
        params = {f"v_{k}": v for k, v in values.items()}
        params["w_id"] = job_id
        if owner is not None:
            params["w_owner"] = owner
        row = _attempt_row(job_id, attempt, worker, now) if attempt is not None else None
        return self._run_update(
            _Update(_update_statement(guard, tuple(sorted(values))), params, row)
        )

    def release(self, job_ids: Iterable[int], owner: str) -> int:
        """Give back claimed jobs that were never sent (a stop came first)."""
        ids = list(job_ids)
        if not ids:
            return 0
        with self._write() as conn:
            return conn.execute(
                update(Job)
                .where(Job.id.in_(ids), Job.state == State.SUBMITTING, Job.owner == owner)
                .values(_back_to_pending())
            ).rowcount

    # -- results ------------------------------------------------------------------------------

    def _page(
        self, columns: Sequence[Any], where: Sequence[Any], batch: str | None, after: int, n: int
    ) -> list[Any]:
        """The next `n` matching rows after id `after` (keyset paging: memory stays flat)."""
        stmt = select(*columns).where(Job.id > after, *where).order_by(Job.id).limit(n)
        if batch is not None:
            stmt = stmt.where(Job.batch == batch)
        with self._read() as conn:
            return list(conn.execute(stmt))

    def poll_targets(self, batch: str | None, after_id: int, limit: int) -> list[PollTarget]:
        """Jobs whose remote request has not ended."""
        rows = self._page(
            (Job.id, Job.reference_id, Job.request_id),
            (Job.state.in_(list(POLLABLE)), Job.request_id.is_not(None)),
            batch,
            after_id,
            limit,
        )
        return [PollTarget(**row._mapping) for row in rows]

    def record_poll(
        self, job_id: int, attempt: AttemptRecord | None, worker: str, **values: Any
    ) -> bool:
        """What a poll learned; guarded so that an ended job never moves again."""
        return self._update_one(
            "polled", job_id, {**values, "polled_at": utcnow()}, attempt, worker
        )

    def fetch_targets(self, batch: str | None, after_id: int, limit: int) -> list[FetchTarget]:
        """Completed jobs with an output to download."""
        columns = (
            Job.id,
            Job.batch,
            Job.reference_id,
            Job.output_url,
            Job.download_state,
            Job.local_path,
            Job.size_bytes,
            Job.sha256,
        )
        where = (Job.state == State.COMPLETED, Job.output_url.is_not(None))
        return [
            FetchTarget(**r._mapping) for r in self._page(columns, where, batch, after_id, limit)
        ]

    def record_download(
        self, job_id: int, attempt: AttemptRecord | None, worker: str, **values: Any
    ) -> None:
        self._update_one("any", job_id, values, attempt, worker)

    # -- operator actions ----------

    def _retry_where(
        self, batch: str | None, states: Sequence[str], error: str | None
    ) -> list[Any]:
        where: list[Any] = [Job.state.in_(list(states))]
        if batch is not None:
            where.append(Job.batch == batch)
        if error:
            where.append(Job.last_error.contains(error, autoescape=True))
        return where

    def retry_preview(
        self, batch: str | None, states: Sequence[str], error: str | None
    ) -> tuple[int, int]:
        """(jobs that retry would put back, those among them that ran at the API and failed
        there: sending those again is paid again)."""
        where = self._retry_where(batch, states, error)
        stmt = select(func.count(), func.count(Job.remote_status)).where(*where)
        with self._read() as conn:
            total, ran = conn.execute(stmt).one()
        return int(total), int(ran)

    def retry(self, batch: str | None, states: Sequence[str], error: str | None) -> int:
        """Put chosen jobs back to pending. A job whose request ran at the API and failed there
        gets a fresh start: that request has ended (it stays in the attempts), so the job is
        sent anew; the others keep whatever look-up they owe."""
        where = self._retry_where(batch, states, error)
        with self._write() as conn:
            ran = conn.execute(
                update(Job)
                .where(*where, Job.remote_status.is_not(None))
                .values(
                    {
                        **_back_to_pending(),
                        "tries": 0,
                        "request_id": None,
                        "lookup_needed": False,
                        "lookup_after": None,
                        "remote_status": None,
                        "remote_error": None,
                        "output_url": None,
                        "remote_started_at": None,
                        "remote_finished_at": None,
                        "polled_at": None,
                    }
                )
            ).rowcount
            rest = conn.execute(
                update(Job).where(*where).values({**_back_to_pending(), "tries": 0})
            ).rowcount
        return int(ran) + int(rest)

    def cancel(self, batch: str | None, reference_ids: Sequence[str]) -> tuple[int, int]:
        """Cancel pending jobs: (cancelled, kept). A pending job whose earlier POST may have
        landed is kept: cancelling it would hide a request the account may have paid for."""
        where = [Job.state == State.PENDING]
        if batch is not None:
            where.append(Job.batch == batch)
        if reference_ids:
            where.append(Job.reference_id.in_(list(reference_ids)))
        with self._write() as conn:
            kept = conn.execute(
                select(func.count()).select_from(Job).where(*where, Job.lookup_needed.is_(True))
            ).scalar()
            done = conn.execute(
                update(Job)
                .where(*where, Job.lookup_needed.is_(False))
                .values(state=State.CANCELLED, updated_at=utcnow())
            ).rowcount
        return int(done), int(kept or 0)

    # -- queries ----------

    def counts(self, batch: str | None = None) -> dict[str, int]:
        stmt = select(Job.state, func.count()).group_by(Job.state)
        if batch is not None:
            stmt = stmt.where(Job.batch == batch)
        with self._read() as conn:
            return {state: n for state, n in conn.execute(stmt)}

    def count_in_states(self, batch: str | None, states: Sequence[str]) -> int:
        stmt = select(func.count()).select_from(Job).where(Job.state.in_(list(states)))
        if batch is not None:
            stmt = stmt.where(Job.batch == batch)
        with self._read() as conn:
            return int(conn.execute(stmt).scalar() or 0)

    def summary(self, batch: str | None = None) -> list[tuple[str, str, int]]:
        """(batch, state, count) for every batch and state present."""
        stmt = (
            select(Job.batch, Job.state, func.count())
            .group_by(Job.batch, Job.state)
            .order_by(Job.batch, Job.state)
        )
        if batch is not None:
            stmt = stmt.where(Job.batch == batch)
        with self._read() as conn:
            return [(b, s, n) for b, s, n in conn.execute(stmt)]

    def batches(self) -> list[str]:
        with self._read() as conn:
            return list(conn.execute(select(Job.batch).distinct().order_by(Job.batch)).scalars())

    def rows(
        self,
        batch: str | None = None,
        states: Sequence[str] = (),
        limit: int | None = None,
        reference_ids: Sequence[str] = (),
    ) -> list[JobRow]:
        stmt = select(*_ROW_COLUMNS).order_by(Job.id)
        if batch is not None:
            stmt = stmt.where(Job.batch == batch)
        if states:
            stmt = stmt.where(Job.state.in_(list(states)))
        if reference_ids:
            stmt = stmt.where(Job.reference_id.in_(list(reference_ids)))
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as conn:
            return [JobRow(*row) for row in conn.execute(stmt)]  # type: ignore[call-arg]

    def iter_rows(self, batch: str | None = None, page: int = 1000) -> Iterator[JobRow]:
        """Every job, in pages (memory stays flat however large the table)."""
        after = 0
        while rows := self._page((Job.id, *_ROW_COLUMNS), (), batch, after, page):
            after = rows[-1][0]
            for row in rows:
                yield JobRow(*row[1:])

    def fail_unsent(self, batch: str, reasons: dict[str, str]) -> int:
        """Fail jobs that were never sent (preflight found their media wrong)."""
        if not reasons:
            return 0
        stmt = (
            update(Job)
            .where(
                Job.batch == batch,
                Job.reference_id == sa.bindparam("ref"),
                sa.or_(Job.state == State.PENDING, Job.state == State.HALTED),
                Job.lookup_needed.is_(False),
            )
            .values(last_error=sa.bindparam("why"), state=State.FAILED, updated_at=utcnow())
        )
        with self._write() as conn:
            rows = [{"ref": ref, "why": why} for ref, why in reasons.items()]
            return int(conn.execute(stmt, rows).rowcount)

    def count_remote_failures(self, batch: str | None) -> int:
        stmt = (
            select(func.count())
            .select_from(Job)
            .where(Job.state == State.FAILED, Job.remote_status.is_not(None))
        )
        if batch is not None:
            stmt = stmt.where(Job.batch == batch)
        with self._read() as conn:
            return int(conn.execute(stmt).scalar() or 0)

    def attempts_of(self, reference_id: str) -> list[dict[str, Any]]:
        stmt = (
            select(
                Attempt.at,
                Attempt.kind,
                Attempt.outcome,
                Attempt.http_status,
                Attempt.error,
                Attempt.request_id,
                Attempt.duration_ms,
                Attempt.worker,
            )
            .join(Job, Job.id == Attempt.job_id)
            .where(Job.reference_id == reference_id)
            .order_by(Attempt.id)
        )
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(stmt)]


@functools.lru_cache(maxsize=4)
def _claim_statements(with_batch: bool) -> tuple[sa.Update, sa.Update]:
    """The two claims (expired leases, then pending jobs), built once: only parameters vary."""
    expired = select(Job.id).where(
        Job.state == State.SUBMITTING, Job.lease_expires < sa.bindparam("c_now")
    )
    # A pending job whose "not found" would still prove nothing waits for its lookup_after.
    pending = select(Job.id).where(
        Job.state == State.PENDING,
        sa.or_(Job.lookup_after.is_(None), Job.lookup_after <= sa.bindparam("c_now")),
    )
    if with_batch:
        expired = expired.where(Job.batch == sa.bindparam("c_batch"))
        pending = pending.where(Job.batch == sa.bindparam("c_batch"))

    def claim(query: sa.Select[Any], **extra: Any) -> sa.Update:
        ids = query.order_by(Job.id).limit(sa.bindparam("c_room")).with_for_update(skip_locked=True)
        return (
            update(Job)
            .where(Job.id.in_(ids))
            .values(
                owner=sa.bindparam("c_owner"),
                updated_at=sa.bindparam("c_updated"),
                lease_expires=sa.bindparam("c_lease"),
                settle_at=sa.bindparam("c_settle"),
                **extra,
            )
            .returning(*_CLAIM_COLUMNS)
        )

    return claim(expired, lookup_needed=True), claim(pending, state=State.SUBMITTING)


@functools.lru_cache(maxsize=256)
def _update_statement(guard: str, keys: tuple[str, ...]) -> sa.Update:
    """One statement object per guard and set of columns, so the hot path compiles nothing.

    owned: a job this worker holds (submitting, our owner); polled: a job not yet ended.
    """
    stmt = update(Job).where(Job.id == sa.bindparam("w_id"))
    if guard == "owned":
        stmt = stmt.where(Job.state == State.SUBMITTING, Job.owner == sa.bindparam("w_owner"))
    elif guard == "polled":
        # OR, not IN: an expanding IN cannot run in an executemany.
        stmt = stmt.where(sa.or_(*(Job.state == state for state in POLLABLE)))
    return stmt.values({k: sa.bindparam(f"v_{k}") for k in keys})


_INSERT_ATTEMPT = insert(Attempt)


def _back_to_pending() -> dict[str, Any]:
    """A job handed back for sending: no owner, no lease (lookup_needed is kept as it is)."""
    return {
        "state": State.PENDING,
        "owner": None,
        "lease_expires": None,
        "settle_at": None,
        "updated_at": utcnow(),
    }


def _attempt_row(job_id: int, attempt: AttemptRecord, worker: str, at: datetime) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "at": at,
        "kind": attempt.kind,
        "outcome": attempt.outcome,
        "http_status": attempt.http_status,
        "error": attempt.error,
        "request_id": attempt.request_id,
        "duration_ms": attempt.duration_ms,
        "worker": worker,
    }


def _revision(conn: Connection) -> str | None:
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def _create_private_file(path: Path) -> None:
    """Create the SQLite file readable by its owner only (it names every media URL)."""
    if path.exists():
        return
    if not path.parent.is_dir():
        raise StoreError(f"cannot create the database {path}: no such directory {path.parent}")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot create the database {path}: {exc.strerror}") from None


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below), so pysqlite must not.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        readonly = conn.get_execution_options().get("dubrunner_readonly")
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _db_message(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    # The first line only: the driver's details below it may quote the values of a row.
    text = (str(orig) if orig is not None else str(exc)).partition("\n")[0]
    if "file is not a database" in text:
        return "the file is not a SQLite database"
    if "unable to open database file" in text:
        return "cannot open the database file"
    return f"database error: {text}"
