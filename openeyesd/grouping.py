"""GPU stage grouping: a loaded model serves many queued jobs before it is swapped.

When the VRAM budget cannot hold the inpainter and the restorer together, running each photo
through all its stages loads one, then the other, for every photo. Instead, before a stage that
declares ``models_needed`` runs, the worker asks ``StageGrouping.check``. It parks the job
(``Parked``: back in the queue, due at once, its attempt given back, ``next_stage`` recorded)
when all of these hold:

- a model the stage needs is not on the GPU now;
- another queued job can go first without a swap: one due and not parked (it has earlier
  stages to run), or one parked before a stage whose models ARE loaded;
- fewer than ``gpu.group_max_jobs`` jobs are parked before this stage already;
- the job has not waited longer than ``gpu.group_max_wait_s`` since it was first parked.

Otherwise the stage runs, and loading its model evicts others by the budget. Every claim
prefers jobs parked before the stages whose models are loaded (``preferred_stages``), so the
jobs that waited for a model run back to back once it is loaded.

One ``StageGrouping`` serves all the workers of a daemon (they share one set of GPU models);
its only state is which models each stage asked for, behind a lock. Two workers deciding at the
same moment may both park or both run: that costs at most one extra swap or one extra wait, so
the bounds above are kept to within the number of workers, not exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import structlog
from sqlalchemy.exc import SQLAlchemyError

from openeyesd.config import GpuConfig
from openeyesd.errors import Parked
from openeyesd.ledger import Job, Ledger, ParkedCounts, utcnow


class ResidentModels(Protocol):
    """Which models are on the GPU now, without loading anything (``GpuBackends``)."""

    def resident_models(self) -> frozenset[str]: ...


class StageGrouping:
    def __init__(
        self, ledger: Ledger, models: ResidentModels, *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._ledger = ledger
        self._models = models
        self._clock = clock
        self._lock = threading.Lock()
        # Stage name -> the models it last said it needs. Learned from the questions asked,
        # so the claim knows which parked jobs the loaded models can serve.
        self._stage_models: dict[str, tuple[str, ...]] = {}
        self._log = structlog.get_logger()

    def preferred_stages(self) -> tuple[str, ...]:
        """Stages whose models are all loaded now: their parked jobs are claimed first."""
        resident = self._models.resident_models()
        if not resident:
            return ()
        with self._lock:
            known = list(self._stage_models.items())
        return tuple(stage for stage, models in known if set(models) <= resident)

    def check(self, job: Job, stage: str, models: tuple[str, ...], gpu: GpuConfig) -> None:
        """Return to let ``stage`` run for ``job`` now; raise ``Parked`` to send it back."""
        if not models:
            return  # this photo needs no model at this stage: nothing to wait for
        with self._lock:
            self._stage_models[stage] = models
        resident = self._models.resident_models()
        if set(models) <= resident or self._waited_enough(job, stage, gpu):
            return
        try:
            counts = self._ledger.parked_counts()
        except SQLAlchemyError as exc:
            # Grouping only saves swaps: a ledger that cannot answer now must not cost the
            # photo an attempt. The stage runs; the next job asks again.
            self._log.warning("grouping.counts_unavailable", stage=stage, error=str(exc))
            return
        parked_here = counts.per_stage.get(stage, 0)
        if parked_here >= gpu.group_max_jobs:
            self._log.info("grouping.enough_waiting", stage=stage, parked=parked_here)
            return
        if self._others_can_go_first(counts, stage, resident):
            raise Parked(stage, models)

    def _waited_enough(self, job: Job, stage: str, gpu: GpuConfig) -> bool:
        if job.parked_at is None:
            return False
        waited = (self._clock() - job.parked_at).total_seconds()
        if waited <= gpu.group_max_wait_s:
            return False
        self._log.info("grouping.waited_enough", stage=stage, waited_s=round(waited, 1))
        return True

    def _others_can_go_first(
        self, counts: ParkedCounts, stage: str, resident: frozenset[str]
    ) -> bool:
        """Some queued job needs no swap: it has earlier stages to run, or waits for a
        stage whose models are loaded. Jobs parked before this same stage, or before another
        stage whose models are not loaded either, do not count: waiting for them would only
        delay the swap that one of them has to make anyway."""
        if counts.unparked_due:
            return True
        with self._lock:
            known = dict(self._stage_models)
        return any(
            n > 0 and other != stage and other in known and set(known[other]) <= resident
            for other, n in counts.per_stage.items()
        )
