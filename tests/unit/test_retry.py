from __future__ import annotations

import random

from openeyesd.config import RetryConfig
from openeyesd.errors import ConfigError, CorruptImage, OutOfMemory, SourceBusy
from openeyesd.retry import Action, backoff_delay, decide

POLICY = RetryConfig(max_attempts=4, base_delay_s=10, max_delay_s=60, jitter=0.0)


def test_transient_errors_back_off_exponentially_up_to_the_cap() -> None:
    delays = [decide(SourceBusy("x"), n, POLICY, infra_pause_s=5).delay_s for n in (1, 2, 3)]
    assert delays == [10, 20, 40]
    assert backoff_delay(10, POLICY, random.Random(0)) == 60


def test_transient_error_fails_when_attempts_are_used_up() -> None:
    assert decide(SourceBusy("x"), 4, POLICY, infra_pause_s=5).action is Action.FAIL


def test_permanent_error_fails_at_once() -> None:
    decision = decide(CorruptImage("truncated"), 1, POLICY, infra_pause_s=5)
    assert decision.action is Action.FAIL


def test_infrastructure_error_pauses_whatever_the_attempts() -> None:
    decision = decide(OutOfMemory("cuda"), 99, POLICY, infra_pause_s=7)
    assert decision == decision.__class__(Action.PAUSE_AND_REQUEUE, 7)


def test_unexpected_exception_is_retried_then_fails() -> None:
    assert decide(ValueError("bug"), 1, POLICY, infra_pause_s=5).action is Action.RETRY
    assert decide(ValueError("bug"), 4, POLICY, infra_pause_s=5).action is Action.FAIL


def test_jitter_spreads_delays_within_bounds() -> None:
    policy = RetryConfig(max_attempts=5, base_delay_s=100, max_delay_s=1000, jitter=0.25)
    rng = random.Random(42)
    delays = {round(backoff_delay(1, policy, rng), 3) for _ in range(50)}
    assert len(delays) > 40
    assert all(75 <= delay <= 125 for delay in delays)


def test_a_configuration_problem_in_a_stage_pauses_instead_of_failing_the_photo() -> None:
    decision = decide(ConfigError("gpu.vram_budget_gb must be set"), 5, POLICY, infra_pause_s=9)
    assert decision.action is Action.PAUSE_AND_REQUEUE
