"""The stage contract. Every stage in ``openeyesd.pipeline.STAGES`` follows it.

A stage is an object with

- ``name``: short, stable, used for its artifact names and in the ledger;
- ``version``: a string bumped whenever the stage's behaviour changes, so artifacts made by
  the old behaviour stop matching and the stage runs again;
- ``settings(config) -> dict``: the configuration values that change its result (they are
  part of its input hash; a config change that does not matter to a stage does not re-run it);
- ``run(ctx) -> dict``: does the work and returns its *artifact*: a JSON-able summary of what it
  found or made. Bulky outputs (the private copy of the original, image patches) are written
  as files under ``ctx.stage_dir(name)`` with ``openeyesd.files`` atomic writes and referred to
  from the summary by path relative to the job's work directory; list them under the key
  ``"files"`` so a summary whose files have gone is not trusted on resume.

Rules:

1. **Inputs are explicit.** A stage reads only the job record, the config, and the artifacts of
   the stages before it (``ctx.artifact(name)``). Its input hash is computed by the pipeline from
   its name, version, settings and the previous stage's artifact hash, and recorded in the ledger
   *before* it runs.
2. **Artifacts are atomic and final.** The pipeline writes the summary as
   ``<work_dir>/<name>.json`` (temp file, fsync, ``os.replace``) only after ``run`` returned; a
   stage writes its own files atomically before returning. A crash at any point leaves either no
   summary (the stage runs again) or a complete one (it is skipped on resume).
3. **Re-running is harmless.** A stage may be run again after a crash with the same inputs; it
   must produce the same effect and never a second copy of anything outside the work directory.
   Only ``write`` touches the output folder, and it writes to a path owned by the job.
4. **Failures are typed.** Raise a ``TransientError``, ``PermanentError`` or ``InfraError`` (see
   ``openeyesd.errors``) with an operator-readable message; ``Deferred`` to wait. Anything else
   is treated as a possibly transient bug and retried a few times before failing.
5. **Long work reports progress.** Call ``ctx.progress()`` inside long loops: it raises
   ``Interrupted`` when the daemon is stopping and ``Cancelled`` when the job was cancelled or its
   lease lost, and it keeps the worker's watchdog fed.
6. **Nothing pretends.** A stage that has nothing to do (no faces) says so in its artifact; a
   stage that is not part of this build is not in ``STAGES`` at all.
7. **GPU models are declared.** A stage that uses models held by the GPU residency manager
   also has ``models_needed(ctx) -> tuple[str, ...]``: the residency names it will use for
   THIS job, empty when it will use none (no face to generate). It reads only what ``run``
   would read and loads nothing. The pipeline asks ``ctx.gate`` with them before the stage
   runs; the gate may park the job (``Parked``) until those models are loaded.

Expensive in-memory values (the decoded photo) may be shared between stages of one run through
``ctx.memo``; they must always be re-creatable from the artifacts, because a resumed job starts
with an empty memo.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from openeyesd.config import Config
from openeyesd.ledger import Job, Ledger, SessionFrame

Artifact = dict[str, Any]


class Stage(Protocol):
    name: str
    version: str

    def settings(self, config: Config) -> dict[str, Any]: ...

    def run(self, ctx: StageContext) -> Artifact: ...


class JobLedger:
    """The ledger operations a stage may use, bound to its job and its worker's lease."""

    def __init__(self, ledger: Ledger, job: Job, worker_id: str) -> None:
        self._ledger, self._job, self._worker_id = ledger, job, worker_id

    def adopt_content_hash(self, sha256: str) -> int | None:
        """Record the real content hash of a job queued under a placeholder identity; returns
        the id of an existing job with that content, if any."""
        return self._ledger.adopt_content_hash(self._job.id, self._worker_id, sha256)

    def record_capture_time(self, captured_at: datetime, source: str) -> None:
        self._ledger.record_capture_time(self._job.id, self._worker_id, captured_at, source)

    def session_frames(self) -> list[SessionFrame]:
        """Every job of this photo's folder (the burst planner groups them by time)."""
        if self._job.session_folder is None:
            return []
        return self._ledger.session_frames(self._job.session_folder)


#: ``gate(stage_name, models)``: returns to let the stage run now, raises ``Parked`` to send
#: the job back to the queue until ``models`` are loaded (``openeyesd.grouping``).
Gate = Callable[[str, tuple[str, ...]], None]


@dataclass
class StageContext:
    job: Job
    config: Config
    work_dir: Path
    #: Raises Interrupted / Cancelled; marks progress for the watchdog. Set by the worker.
    progress: Callable[[], None] = lambda: None
    #: Set by the worker; None only in tests of stages that do not need it.
    ledger: JobLedger | None = None
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    #: The stage running now (set by the pipeline loop), for status and logs.
    current_stage: str | None = None
    memo: dict[str, Any] = field(default_factory=dict)
    #: Durations of the stages that ran in this attempt, for the sidecar.
    timings: dict[str, float] = field(default_factory=dict)
    #: Asked before a stage that declares ``models_needed`` runs. Set by the worker in the GPU
    #: profile with ``gpu.group_jobs``; None otherwise (no stage is ever held back).
    gate: Gate | None = None

    def job_ledger(self) -> JobLedger:
        if self.ledger is None:
            raise RuntimeError("this stage needs the ledger; the worker sets ctx.ledger")
        return self.ledger

    def artifact(self, name: str) -> Artifact:
        try:
            return self.artifacts[name]
        except KeyError:
            raise RuntimeError(f"stage '{name}' has not produced an artifact yet") from None

    def invalidate(self, name: str) -> None:
        """Make stage ``name`` run again on the next attempt (its inputs went stale in a way
        its input hash cannot see, e.g. a donor frame was deleted)."""
        (self.work_dir / f"{name}.json").unlink(missing_ok=True)

    def stage_dir(self, name: str) -> Path:
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def path(self, relative: str) -> Path:
        """Resolve a path stored in an artifact (relative to the work directory)."""
        return self.work_dir / relative

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.work_dir))
