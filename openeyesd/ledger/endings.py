"""How a worker lets go of the job it holds, as a value the ledger applies.

The worker decides (done, skipped, failed, back in the queue) and the ledger writes it, either
alone (``Ledger.settle``) or in the same transaction as the worker's next claim
(``Ledger.finish_and_claim``). Keeping the decision a plain value is what lets the worker hand
it over to the next claim instead of writing it at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from openeyesd.errors import OpenEyesError
from openeyesd.ledger.schema import JobState

#: An ending leaves the job in one of these: final, or runnable again (queued / waiting).
ENDING_STATES = (
    JobState.DONE,
    JobState.SKIPPED,
    JobState.FAILED,
    JobState.QUEUED,
    JobState.WAITING,
)


@dataclass(frozen=True)
class Ending:
    """The new state of a job its worker is done with. Build one with the class methods."""

    state: JobState
    outcome: str | None = None
    output_path: str | None = None
    error_kind: str | None = None
    #: The error, or for a skip the reason (``openeyesctl`` shows it either way).
    error_message: str | None = None
    #: Back in the queue only: run again no sooner than this.
    delay_s: float = 0.0
    #: Back in the queue only: False gives back the attempt the claim took (not the photo's
    #: fault: infrastructure, shutdown, a burst still growing).
    count_attempt: bool = True
    #: Parked (GPU stage grouping): the stage whose model the job waits for.
    next_stage: str | None = None

    def __post_init__(self) -> None:
        if self.state not in ENDING_STATES:
            raise ValueError(f"a job cannot be ended as {self.state}")
        if self.next_stage is not None and self.state is not JobState.QUEUED:
            raise ValueError(f"only a queued job waits for a stage, not a {self.state} one")

    @property
    def requeues(self) -> bool:
        """True when the job goes back to the queue rather than to a final state."""
        return self.state in (JobState.QUEUED, JobState.WAITING)

    @classmethod
    def finished(
        cls, state: JobState, *, outcome: str, output_path: str | None, note: str | None = None
    ) -> Ending:
        """done or skipped; ``note`` says why it was skipped."""
        if state not in (JobState.DONE, JobState.SKIPPED):
            raise ValueError(f"a job finishes as done or skipped, not {state}")
        return cls(state, outcome=outcome, output_path=output_path, error_message=note)

    @classmethod
    def failed(cls, error: OpenEyesError) -> Ending:
        return cls(JobState.FAILED, outcome="failed", error_kind=error.kind,
                   error_message=error.message)

    @classmethod
    def retry(
        cls,
        error: OpenEyesError,
        *,
        delay_s: float,
        count_attempt: bool = True,
        state: JobState = JobState.QUEUED,
    ) -> Ending:
        """Back in the queue after ``delay_s``; ``state=WAITING`` parks it instead."""
        if state not in (JobState.QUEUED, JobState.WAITING):
            raise ValueError(f"a retried job goes back as queued or waiting, not {state}")
        return cls(state, error_kind=error.kind, error_message=error.message, delay_s=delay_s,
                   count_attempt=count_attempt)

    @classmethod
    def parked(cls, stage: str) -> Ending:
        """Back in the queue at once, the attempt given back, waiting to run ``stage`` until
        its model is loaded (``openeyesd.grouping``); its error columns are left alone."""
        return cls(JobState.QUEUED, count_attempt=False, next_stage=stage)
