"""What to do after a stage raised: a pure function of (error, attempts, policy).

No database, no clock: ``decide`` is unit-tested on its own, and the worker applies its answer
through the ledger. Backoff is exponential with jitter so that a burst of jobs that failed
together (a NAS that went away) does not come back in lock-step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from openeyesd.config import RetryConfig
from openeyesd.errors import (
    ConfigError,
    InfraError,
    OpenEyesError,
    PermanentError,
    TransientError,
)


class Action(StrEnum):
    #: Requeue after ``delay_s``; the attempt counts.
    RETRY = "retry"
    #: The machine is at fault: pause the worker, requeue, give the attempt back.
    PAUSE_AND_REQUEUE = "pause_and_requeue"
    #: Give up: the job fails with the error's kind and message.
    FAIL = "fail"


@dataclass(frozen=True)
class RetryDecision:
    action: Action
    delay_s: float = 0.0


def backoff_delay(attempts: int, policy: RetryConfig, rng: random.Random) -> float:
    """base * 2^(attempts-1), capped, then +/- jitter (as a fraction of the delay)."""
    exponent = max(attempts - 1, 0)
    delay = min(policy.base_delay_s * (2.0 ** min(exponent, 32)), policy.max_delay_s)
    spread = delay * policy.jitter
    return max(0.0, delay + rng.uniform(-spread, spread))


def decide(
    error: BaseException,
    attempts: int,
    policy: RetryConfig,
    *,
    infra_pause_s: float,
    rng: random.Random | None = None,
) -> RetryDecision:
    """``attempts`` is how many times the job has been claimed, including this one."""
    rng = rng or random.Random()
    if isinstance(error, InfraError | ConfigError):
        # A backend that cannot run as configured fails every photo alike: fix the machine
        # (or config.toml), then the queue goes on; the photos keep their attempts.
        return RetryDecision(Action.PAUSE_AND_REQUEUE, infra_pause_s)
    if isinstance(error, PermanentError):
        return RetryDecision(Action.FAIL)
    if not isinstance(error, TransientError) and isinstance(error, OpenEyesError):
        return RetryDecision(Action.FAIL)
    # TransientError, and also errors we did not anticipate (a bug, an OSError): retrying a
    # few times is cheap, and the last attempt still ends in a failure with the message.
    if attempts >= policy.max_attempts:
        return RetryDecision(Action.FAIL)
    return RetryDecision(Action.RETRY, backoff_delay(attempts, policy, rng))
