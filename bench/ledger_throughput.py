"""No-op job throughput: our ledger versus huey's SqliteStorage, side by side in one run.

Ours:  enqueue N jobs, then claim once and finish_and_claim(done) until it returns None, as a
       busy worker does: each job's ending is committed with the next claim (at-least-once:
       the row stays, leased, until its ending is written).
Huey:  storage.enqueue N payloads, then storage.dequeue until it returns None (the row is
       deleted as it is read: at-most-once).
Both on SQLite files in the same temporary folder, each with its default durability settings
(ours: WAL + synchronous=NORMAL; huey: WAL, synchronous left at SQLite's default, FULL here).
The headline ratio is ours/huey. Also measured, reported apart: ours with one stage recorded
per job (start_stage + finish_stage), huey with synchronous=NORMAL (our durability), ours
enqueueing through Ledger.enqueue_many in batches (as the watcher does for files that became
stable together), and ours with the hot path through SQLAlchemy instead of on SQLite's driver
(``openeyesd/ledger/hotpath.py``; the path PostgreSQL takes). Rounds are interleaved (ours,
huey, ours_with_stage, huey_sync_normal, ours_enqueue_many, ours_via_sqlalchemy, ours, huey,
...) so that noise from this shared machine hits every contender alike; medians are reported.
Nothing is asserted.

    .venv/bin/python bench/ledger_throughput.py [--jobs 300] [--rounds 5] [--json]
    .venv/bin/python bench/ledger_throughput.py --profile   # cProfile one round of ours
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import itertools
import pickle
import pstats
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from _common import emit_json, filesystem_of, median
from huey import SqliteHuey

from openeyesd.ledger import (
    Ending,
    EnqueueItem,
    JobState,
    Ledger,
    create_ledger_engine,
    migrate,
)

WORKER_ID = "bench:0/0"
LEASE_S = 120.0
#: Files per enqueue_many call for ours_enqueue_many: a burst's tick takes tens to hundreds.
ENQUEUE_BATCH = 50
#: SQLite's synchronous levels, by the number PRAGMA synchronous returns.
SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
#: What every no-op job ends as.
DONE = Ending.finished(JobState.DONE, outcome="noop", output_path=None)


class Contender(Protocol):
    name: str

    def run(self, n: int) -> tuple[float, float]:
        """Push ``n`` jobs through; return (enqueue seconds, drain seconds)."""
        ...

    def settings(self) -> str: ...

    def close(self) -> None: ...


class OurLedger:
    """enqueue per job, then [start_stage -> finish_stage] -> finish_and_claim per job; with
    ``batch`` > 1 the jobs are enqueued ``batch`` at a time through ``enqueue_many``;
    ``on_driver=False`` runs the hot path through SQLAlchemy."""

    def __init__(
        self,
        directory: Path,
        name: str,
        *,
        with_stage: bool = False,
        batch: int = 1,
        on_driver: bool | None = None,
    ) -> None:
        self.name = name
        self._engine = create_ledger_engine(f"sqlite:///{directory / name}.sqlite3")
        migrate.upgrade(self._engine)
        self.ledger = Ledger(self._engine, hot_path_on_driver=on_driver)
        self._with_stage = with_stage
        self._batch = batch
        self._serial = itertools.count()
        self._directory = directory

    def run(self, n: int) -> tuple[float, float]:
        started = time.perf_counter()
        if self._batch > 1:
            self._enqueue_batches(n)
        else:
            for _ in range(n):
                self._enqueue_one(next(self._serial))
        enqueued = time.perf_counter()
        drained = self._drain()
        finished = time.perf_counter()
        if drained != n:
            raise RuntimeError(f"{self.name}: enqueued {n} jobs but drained {drained}")
        return enqueued - started, finished - enqueued

    def _enqueue_one(self, serial: int) -> None:
        self.ledger.enqueue(**dataclasses.asdict(self._item(serial)))

    def _enqueue_batches(self, n: int) -> None:
        items = [self._item(next(self._serial)) for _ in range(n)]
        for start in range(0, n, self._batch):
            self.ledger.enqueue_many(items[start : start + self._batch])

    def _item(self, serial: int) -> EnqueueItem:
        relative = f"session/IMG_{serial:06d}.jpg"
        return EnqueueItem(
            sha256=f"{serial:064x}",
            size_bytes=1000,
            source_path=f"{self._directory}/incoming/{relative}",
            watch_root=f"{self._directory}/incoming",
            relative_path=relative,
            mtime_ns=serial,
            pipeline_version="1",
        )

    def _drain(self) -> int:
        """As a busy worker does: each job's ending goes in with the next claim."""
        done = 0
        work_root = str(self._directory / "work")
        job = self.ledger.claim(WORKER_ID, lease_s=LEASE_S, work_root=work_root)
        while job is not None:
            if self._with_stage:
                run_id = self.ledger.start_stage(job.id, WORKER_ID, stage="ingest", input_hash="0")
                self.ledger.finish_stage(run_id, artifact_path=None, duration_s=0.0)
            job = self.ledger.finish_and_claim(
                job.id, WORKER_ID, ending=DONE, lease_s=LEASE_S, work_root=work_root
            )
            done += 1
        return done

    def settings(self) -> str:
        with self._engine.connect() as conn:
            journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        return f"journal_mode={journal}, synchronous={SYNC_NAMES.get(sync, sync)}"

    def close(self) -> None:
        self._engine.dispose()


class HueyStorage:
    """storage.enqueue -> storage.dequeue; ``synchronous`` overrides the default when set."""

    def __init__(self, directory: Path, name: str, *, synchronous: int | None = None) -> None:
        self.name = name
        self._huey = SqliteHuey(name, filename=str(directory / f"{name}.db"))
        self.storage = self._huey.storage
        if synchronous is not None:
            # huey keeps one connection per storage, so this sticks for every later call.
            self.storage.conn.execute(f"pragma synchronous={synchronous}")
        self._serial = itertools.count()
        self._directory = directory

    def run(self, n: int) -> tuple[float, float]:
        started = time.perf_counter()
        for _ in range(n):
            self.storage.enqueue(self._payload(next(self._serial)))
        enqueued = time.perf_counter()
        drained = 0
        while self.storage.dequeue() is not None:
            drained += 1
        finished = time.perf_counter()
        if drained != n:
            raise RuntimeError(f"{self.name}: enqueued {n} tasks but dequeued {drained}")
        return enqueued - started, finished - enqueued

    def _payload(self, serial: int) -> bytes:
        # About what a real task would carry: the file's identity and where it was found.
        return pickle.dumps((f"{serial:064x}", f"{self._directory}/incoming/IMG_{serial:06d}.jpg"))

    def settings(self) -> str:
        journal = self.storage.conn.execute("pragma journal_mode").fetchone()[0]
        sync = self.storage.conn.execute("pragma synchronous").fetchone()[0]
        return f"journal_mode={journal}, synchronous={SYNC_NAMES.get(sync, sync)}"

    def close(self) -> None:
        self.storage.close()


@dataclass
class Tally:
    settings: str
    rates: list[float] = field(default_factory=list)
    enqueue_rates: list[float] = field(default_factory=list)
    drain_rates: list[float] = field(default_factory=list)

    def add(self, n: int, enqueue_s: float, drain_s: float) -> None:
        self.rates.append(n / (enqueue_s + drain_s))
        self.enqueue_rates.append(n / enqueue_s)
        self.drain_rates.append(n / drain_s)

    def summary(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "jobs_per_s": median(self.rates),
            "enqueue_per_s": median(self.enqueue_rates),
            "drain_per_s": median(self.drain_rates),
            "rounds_jobs_per_s": [round(rate, 1) for rate in self.rates],
        }


def build_contenders(directory: Path) -> list[Contender]:
    """Order = order within a round. The first two make the headline ratio."""
    return [
        OurLedger(directory, "ours"),
        HueyStorage(directory, "huey"),
        OurLedger(directory, "ours_with_stage", with_stage=True),
        HueyStorage(directory, "huey_sync_normal", synchronous=1),
        OurLedger(directory, "ours_enqueue_many", batch=ENQUEUE_BATCH),
        OurLedger(directory, "ours_via_sqlalchemy", on_driver=False),
    ]


def measure(
    contenders: list[Contender], *, jobs: int, rounds: int, warmup: int
) -> dict[str, Tally]:
    tallies = {c.name: Tally(c.settings()) for c in contenders}
    for contender in contenders:
        contender.run(warmup)  # first-call costs: statement compilation, page cache
    for _ in range(rounds):
        for contender in contenders:
            enqueue_s, drain_s = contender.run(jobs)
            tallies[contender.name].add(jobs, enqueue_s, drain_s)
    return tallies


def report(tallies: dict[str, Tally], args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    summaries = {name: tally.summary() for name, tally in tallies.items()}
    ours, huey = summaries["ours"]["jobs_per_s"], summaries["huey"]["jobs_per_s"]
    normal = summaries["huey_sync_normal"]["jobs_per_s"]
    batched = summaries["ours_enqueue_many"]["jobs_per_s"]
    via_sqlalchemy = summaries["ours_via_sqlalchemy"]["jobs_per_s"]
    where = filesystem_of(directory)
    print(f"{args.rounds} interleaved rounds of {args.jobs} no-op jobs on {where}")
    print(f"{'contender':<18} {'jobs/s':>8} {'enqueue/s':>10} {'drain/s':>9}  settings")
    for name, summary in summaries.items():
        print(
            f"{name:<18} {summary['jobs_per_s']:>8.0f} {summary['enqueue_per_s']:>10.0f} "
            f"{summary['drain_per_s']:>9.0f}  {summary['settings']}"
        )
        print(f"{'':<18} rounds: {summary['rounds_jobs_per_s']}")
    print(f"ratio ours/huey (defaults, medians): {ours / huey:.2f}")
    print(f"ratio ours/huey at synchronous=NORMAL on both: {ours / normal:.2f}")
    print(f"ratio ours_enqueue_many/huey (batches of {ENQUEUE_BATCH}): {batched / huey:.2f}")
    print(f"ratio ours_via_sqlalchemy/huey (hot path via SQLAlchemy): {via_sqlalchemy / huey:.2f}")
    return {
        "jobs": args.jobs,
        "rounds": args.rounds,
        "filesystem": filesystem_of(directory),
        "ours_jobs_per_s": ours,
        "huey_jobs_per_s": huey,
        "ratio": ours / huey,
        "ours_with_stage_jobs_per_s": summaries["ours_with_stage"]["jobs_per_s"],
        "huey_sync_normal_jobs_per_s": normal,
        "ratio_vs_huey_sync_normal": ours / normal,
        "ours_enqueue_many_jobs_per_s": batched,
        "enqueue_many_ratio": batched / huey,
        "ours_via_sqlalchemy_jobs_per_s": via_sqlalchemy,
        "via_sqlalchemy_ratio": via_sqlalchemy / huey,
        "contenders": summaries,
    }


def profile_ours(directory: Path, jobs: int, top: int) -> None:
    """cProfile one warm round of our ledger; print the heaviest functions."""
    ours = OurLedger(directory, "ours_profiled")
    ours.run(20)
    profiler = cProfile.Profile()
    profiler.runcall(ours.run, jobs)
    ours.close()
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(key).print_stats(top)
        print(out.getvalue())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs per round (default 300)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed jobs first (default 20)")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temp folder")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile one round of ours instead")
    parser.add_argument("--top", type=int, default=25, help="rows per profile table")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    return parser.parse_args(argv)


def with_temp_dir(parent: Path | None, body: Callable[[Path], None]) -> None:
    directory = Path(tempfile.mkdtemp(prefix="openeyes-bench-", dir=parent))
    try:
        body(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def body(directory: Path) -> None:
        if args.profile:
            profile_ours(directory, args.jobs, args.top)
            return
        contenders = build_contenders(directory)
        try:
            tallies = measure(contenders, jobs=args.jobs, rounds=args.rounds, warmup=args.warmup)
        finally:
            for contender in contenders:
                contender.close()
        payload = report(tallies, args, directory)
        if args.json:
            emit_json(payload)

    with_temp_dir(args.dir, body)


if __name__ == "__main__":
    main()
