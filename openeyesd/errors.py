"""Every way a photo's job can end other than "done", as types.

Three families decide what the worker does (see ``openeyesd.retry.decide``):

- ``TransientError``: may succeed later (file busy, disk briefly full, database locked).
  Retried with exponential backoff until the retry policy's attempts are used up.
- ``PermanentError``: this input will never work (truncated JPEG, not an image, too many
  pixels). The job fails at once with the reason; retrying it changes nothing.
- ``InfraError``: the machine, not the photo, is at fault (backend missing, GPU out of memory).
  The worker pauses and the job is requeued without spending one of the photo's attempts.

Each error carries a short stable ``kind`` (stored in the ledger, shown by ``openeyesctl``,
safe to grep and to alert on) and a message written for the operator: what happened and what
to do next.
"""

from __future__ import annotations


class OpenEyesError(Exception):
    """Root of every error this package raises on purpose."""

    kind: str = "error"

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(OpenEyesError):
    """The configuration file is missing or invalid; the daemon refuses to start."""

    kind = "config"


class TransientError(OpenEyesError):
    kind = "transient"


class PermanentError(OpenEyesError):
    kind = "permanent"


class InfraError(OpenEyesError):
    kind = "infrastructure"


# --- transient -------------------------------------------------------------------------------


class SourceBusy(TransientError):
    """The original is locked, still being written, or briefly unreadable."""

    kind = "source_busy"


class LedgerBusy(TransientError):
    kind = "ledger_busy"


# --- permanent: bad input ----------------------------------------------------------------------


class SourceMissing(PermanentError):
    """The original disappeared before the worker could take its private copy."""

    kind = "source_missing"


class SourcePermissionDenied(PermanentError):
    kind = "permission_denied"


class EmptyFile(PermanentError):
    kind = "empty_file"


class NotAnImage(PermanentError):
    kind = "not_an_image"


class UnsupportedFormat(PermanentError):
    kind = "unsupported_format"


class CorruptImage(PermanentError):
    kind = "corrupt_image"


class TooManyPixels(PermanentError):
    """Decompression-bomb guard: refuse before decoding."""

    kind = "too_many_pixels"


class FileTooLarge(PermanentError):
    """Above limits.max_file_mb: refused before reading it."""

    kind = "file_too_large"


class AnimatedImage(PermanentError):
    kind = "animated_image"


class UnsafePath(PermanentError):
    """A symlink or path that leads outside the watched folder."""

    kind = "unsafe_path"


class OutputConflict(PermanentError):
    """The output path exists and belongs to another job; we never overwrite it."""

    kind = "output_conflict"


# --- infrastructure ----------------------------------------------------------------------------


class BackendUnavailable(InfraError):
    kind = "backend_unavailable"


class OutOfMemory(InfraError):
    kind = "out_of_memory"


class OutputUnwritable(InfraError):
    """The output folder refuses writes (permissions, read-only mount): fix it, not the photo."""

    kind = "output_unwritable"


class DiskFull(InfraError):
    kind = "disk_full"


class Cancelled(OpenEyesError):
    """The operator cancelled the job while it ran; the worker stops it between stages."""

    kind = "cancelled"


class Deferred(OpenEyesError):
    """Not an error: the job cannot go on yet (its burst may still grow). The worker parks it
    in the ``waiting`` state for ``delay_s`` without spending an attempt."""

    kind = "deferred"

    def __init__(self, message: str, *, delay_s: float) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class Parked(OpenEyesError):
    """Not an error: in the GPU profile the job's next stage needs a model that is not loaded,
    and other queued jobs can use what is loaded (or have earlier stages to run). The worker
    puts it back in the queue, due at once and without spending an attempt, marked with the
    stage it waits for, so that it is claimed together with the others once that model is
    loaded (``gpu.group_jobs``)."""

    kind = "parked"

    def __init__(self, stage: str, models: tuple[str, ...]) -> None:
        super().__init__(f"parked before stage '{stage}' until {', '.join(models)} is loaded")
        self.stage = stage
        self.models = models


class Interrupted(OpenEyesError):
    """The daemon is stopping; the job goes back to the queue and resumes from its last
    artifact on the next start, without spending an attempt."""

    kind = "interrupted"


class SourceChanged(PermanentError):
    """The original's content changed after it was queued; the new content is its own job."""

    kind = "source_changed"


# --- normal endings that are not "done" --------------------------------------------------------


class JobSkipped(OpenEyesError):
    """A normal result, not a failure: the job ends as ``skipped`` with ``kind`` as outcome."""

    kind = "skipped"


class DuplicateImage(JobSkipped):
    kind = "duplicate"

    def __init__(self, job_id: int) -> None:
        super().__init__(f"same content as job {job_id}; see `openeyesctl jobs show {job_id}`")
        self.job_id = job_id


class InternalError(TransientError):
    """An exception we did not anticipate (a bug, or an OS error with no better type). It is
    retried like a transient error, since some are, and ends as a failure with the message."""

    kind = "internal"
