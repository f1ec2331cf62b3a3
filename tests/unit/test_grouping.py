"""GPU stage grouping (``openeyesd.grouping``) with fake stages and a fake GPU that holds one
model at a time: the worker, the gate and the ledger together, no torch, no weights."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from openeyesd.config import Config
from openeyesd.errors import Parked
from openeyesd.grouping import StageGrouping
from openeyesd.ledger import Ending, Job, JobState, Ledger, utcnow
from openeyesd.stages.base import Artifact, StageContext
from openeyesd.worker import Worker
from tests.unit.fake_stages import RecordingStage
from tests.unit.test_worker import enqueue


class OneModelCard:
    """A GPU with room for one model: using another one evicts it (one load each time)."""

    def __init__(self) -> None:
        self.loaded: str | None = None
        self.loads: list[str] = []
        self._lock = threading.Lock()

    def resident_models(self) -> frozenset[str]:
        loaded = self.loaded
        return frozenset() if loaded is None else frozenset({loaded})

    def use(self, model: str) -> None:
        with self._lock:
            if self.loaded != model:
                self.loads.append(model)
                self.loaded = model


@dataclass
class ModelStage(RecordingStage):
    """A stage that uses ``model`` on ``card`` for the jobs ``needs`` says, and declares it."""

    card: OneModelCard = field(default_factory=OneModelCard)
    model: str = ""
    needs: Callable[[StageContext], bool] = lambda _ctx: True

    def models_needed(self, ctx: StageContext) -> tuple[str, ...]:
        return (self.model,) if self.needs(ctx) else ()

    def run(self, ctx: StageContext) -> Artifact:
        if self.needs(ctx):
            self.card.use(self.model)
        return super().run(ctx)


@dataclass
class Line:
    """The fake GPU pipeline: ingest (CPU) -> gen (model A) -> rest (model B) -> write."""

    card: OneModelCard
    write: RecordingStage
    stages: list[Any]


def gpu_line(needs: Callable[[StageContext], bool] = lambda _ctx: True) -> Line:
    card = OneModelCard()
    write = RecordingStage("write")
    stages = [RecordingStage("ingest"),
              ModelStage("gen", card=card, model="A", needs=needs),
              ModelStage("rest", card=card, model="B", needs=needs), write]
    return Line(card, write, stages)


def gpu_config(make_config: Callable[..., Config], profile: str = "gpu",
               **grouping: Any) -> Config:
    return make_config(pipeline={"profile": profile}, gpu={"device": "cpu", **grouping})


@contextmanager
def running(worker: Worker, stop: threading.Event) -> Iterator[None]:
    """``worker.run()`` in a thread, as the daemon runs it, stopped on leaving the block."""
    thread = threading.Thread(target=worker.run, name="test-worker")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive(), "the worker did not stop"


def wait_until_final(ledger: Ledger, ids: list[int], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(ledger.get_job(i).state is JobState.DONE for i in ids):  # type: ignore[union-attr]
        assert time.monotonic() < deadline, [ledger.get_job(i) for i in ids]
        time.sleep(0.02)


def drain(worker: Worker, ledger: Ledger, *, limit: int = 100) -> None:
    """``run_once`` until nothing is due (each call claims one job and writes its ending)."""
    for _ in range(limit):
        if not worker.run_once():
            return
    pytest.fail(f"jobs still due after {limit} claims: {ledger.parked_counts()}")


@pytest.fixture
def four_jobs(ledger: Ledger) -> list[int]:
    return [enqueue(ledger, f"{n}.jpg") for n in range(4)]


def assert_each_done_once(ledger: Ledger, ids: list[int], line: Line) -> None:
    jobs = [ledger.get_job(job_id) for job_id in ids]
    assert all(job is not None and job.state is JobState.DONE for job in jobs), jobs
    assert sorted(line.write.calls) == sorted(ids)  # every job written exactly once
    assert [job.attempts for job in jobs if job] == [1] * len(ids)  # parking spends none
    assert all(job.next_stage is None and job.parked_at is None for job in jobs if job)


@pytest.mark.parametrize(("profile", "group_jobs", "loads"),
                         [("gpu", True, 2), ("gpu", False, 8), ("cpu", True, 8)])
def test_grouping_loads_each_model_once_for_the_whole_queue(
    make_config: Callable[..., Config], ledger: Ledger, four_jobs: list[int],
    profile: str, group_jobs: bool, loads: int,
) -> None:
    """The daemon's loop (``Worker.run``: each ending written with the next claim)."""
    config = gpu_config(make_config, profile, group_jobs=group_jobs)
    line = gpu_line()
    stop = threading.Event()
    worker = Worker(config=config, ledger=ledger, stages=line.stages, stop=stop,
                    grouping=StageGrouping(ledger, line.card))
    with running(worker, stop):
        wait_until_final(ledger, four_jobs)
    assert len(line.card.loads) == loads, line.card.loads
    assert_each_done_once(ledger, four_jobs, line)




def test_the_bounded_group_size_loads_the_model_once_that_many_jobs_wait(
    make_config: Callable[..., Config], ledger: Ledger, four_jobs: list[int],
) -> None:
    """group_max_jobs = 2: jobs 0 and 1 wait before gen; job 2 finds two waiting and loads A;
    0, 2 wait before rest, 1 finds two waiting and loads B; job 3 comes last and has nobody
    to wait for. Each step is a run_once (the claim and the ending written apart)."""
    config = gpu_config(make_config, group_max_jobs=2)
    line = gpu_line()
    worker = Worker(config=config, ledger=ledger, stages=line.stages,
                    grouping=StageGrouping(ledger, line.card))
    drain(worker, ledger)
    assert line.card.loads == ["A", "B", "A", "B"]
    assert_each_done_once(ledger, four_jobs, line)


def test_a_job_whose_stage_needs_no_model_is_never_parked(
    make_config: Callable[..., Config], ledger: Ledger, four_jobs: list[int],
) -> None:
    no_faces = four_jobs[0]
    line = gpu_line(needs=lambda ctx: ctx.job.id != no_faces)
    worker = Worker(config=gpu_config(make_config), ledger=ledger, stages=line.stages,
                    grouping=StageGrouping(ledger, line.card))
    assert worker.run_once()  # claims the oldest: the photo with nothing to generate
    job = ledger.get_job(no_faces)
    assert job is not None and job.state is JobState.DONE and job.attempts == 1
    assert line.card.loads == [] and ledger.parked_counts().unparked_due
    drain(worker, ledger)
    assert line.card.loads == ["A", "B"]
    assert_each_done_once(ledger, four_jobs, line)


def test_workers_sharing_one_grouping_finish_every_job_once(
    make_config: Callable[..., Config], ledger: Ledger,
) -> None:
    """Two worker threads, one card, one StageGrouping (as ``daemon._start_workers`` builds
    them). Their decisions may race (then one more swap happens); every job still ends done
    exactly once with one attempt, and with fewer loads than jobs (2 to 4 seen; 16 without)."""
    ids = [enqueue(ledger, f"{n}.jpg") for n in range(8)]
    config = gpu_config(make_config)
    line = gpu_line()
    grouping = StageGrouping(ledger, line.card)
    stop = threading.Event()
    workers = [Worker(config=config, ledger=ledger, stages=line.stages, stop=stop, slot=slot,
                      grouping=grouping) for slot in range(2)]
    with running(workers[0], stop), running(workers[1], stop):
        wait_until_final(ledger, ids)
    assert_each_done_once(ledger, ids, line)
    assert len(line.card.loads) < len(ids), line.card.loads  # ungrouped: two per job


# -- the gate's bounds, asked directly --------------------------------------------------------


@pytest.fixture
def grouping_config(make_config: Callable[..., Config]) -> Config:
    return gpu_config(make_config, group_max_jobs=2, group_max_wait_s=300)


def claim(ledger: Ledger, *prefer: str) -> Job:
    job = ledger.claim("w", lease_s=30, work_root="/w", prefer=prefer)
    assert job is not None
    return job


def ask(grouping: StageGrouping, ledger: Ledger, job: Job, config: Config, stage: str = "gen",
        models: tuple[str, ...] = ("A",)) -> bool:
    """True when the gate parks the job; its ending is then written, as the worker would."""
    try:
        grouping.check(job, stage, models, config.gpu)
    except Parked as parked:
        assert (parked.stage, parked.models) == (stage, models)
        ledger.settle(job.id, "w", Ending.parked(stage))
        return True
    return False


def test_max_wait_lets_a_job_run_once_it_has_waited_long_enough(
    ledger: Ledger, grouping_config: Config,
) -> None:
    waiting, upstream = enqueue(ledger, "a.jpg"), enqueue(ledger, "b.jpg")
    now = [utcnow()]
    grouping = StageGrouping(ledger, OneModelCard(), clock=lambda: now[0])
    assert ask(grouping, ledger, claim(ledger), grouping_config)  # b has earlier stages to run
    again = claim(ledger, "gen")
    assert again.id == waiting and again.parked_at is not None
    assert ask(grouping, ledger, again, grouping_config)  # b still queued: waits again
    again = claim(ledger, "gen")
    now[0] = again.parked_at + timedelta(seconds=301)  # type: ignore[operator]
    assert not ask(grouping, ledger, again, grouping_config)  # 301 s > 300 s: runs, b or not
    assert ledger.get_job(upstream).state is JobState.QUEUED  # type: ignore[union-attr]


def test_max_jobs_loads_the_model_once_that_many_wait_for_it(
    ledger: Ledger, grouping_config: Config,
) -> None:
    for n in range(4):
        enqueue(ledger, f"{n}.jpg")
    grouping = StageGrouping(ledger, OneModelCard())
    assert ask(grouping, ledger, claim(ledger), grouping_config)
    assert ask(grouping, ledger, claim(ledger), grouping_config)
    assert not ask(grouping, ledger, claim(ledger), grouping_config)  # 2 wait; 1 more is due
    assert ledger.parked_counts().per_stage == {"gen": 2}


def test_only_jobs_a_loaded_model_can_serve_or_unparked_jobs_hold_one_back(
    ledger: Ledger, grouping_config: Config,
) -> None:
    """Jobs waiting for a model that is not loaded either (or for this same stage) are no
    reason to wait: one of them would have to make the swap anyway."""
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        enqueue(ledger, name)
    card = OneModelCard()
    grouping = StageGrouping(ledger, card)
    assert ask(grouping, ledger, claim(ledger), grouping_config, "rest", ("B",))  # b, c: upstream
    assert ask(grouping, ledger, claim(ledger), grouping_config, "gen", ("A",))  # c: upstream
    last = claim(ledger)
    assert ledger.parked_counts().per_stage == {"rest": 1, "gen": 1}
    assert not ask(grouping, ledger, last, grouping_config, "gen", ("A",))  # nobody to let go first
    card.use("A")  # the stage ran
    assert grouping.preferred_stages() == ("gen",)
    assert ask(grouping, ledger, last, grouping_config, "rest", ("B",))  # the one at gen can use A
    assert claim(ledger, *grouping.preferred_stages()).next_stage == "gen"


def test_a_loaded_model_or_no_model_never_parks(ledger: Ledger, grouping_config: Config) -> None:
    for n in range(3):
        enqueue(ledger, f"{n}.jpg")
    card = OneModelCard()
    card.use("A")
    grouping = StageGrouping(ledger, card)
    assert not ask(grouping, ledger, claim(ledger), grouping_config, "gen", ("A",))
    assert not ask(grouping, ledger, claim(ledger), grouping_config, "rest", ())
    assert ledger.parked_counts().per_stage == {}


def test_a_ledger_that_cannot_count_lets_the_stage_run(
    ledger: Ledger, grouping_config: Config, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Grouping only saves swaps: it never costs a photo an attempt."""
    for n in range(3):
        enqueue(ledger, f"{n}.jpg")

    def locked() -> None:
        raise OperationalError("SELECT ...", {}, Exception("database is locked"))

    grouping = StageGrouping(ledger, OneModelCard())
    job = claim(ledger)
    monkeypatch.setattr(ledger, "parked_counts", locked)
    assert not ask(grouping, ledger, job, grouping_config)
