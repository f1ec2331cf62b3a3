"""Several workers share the cores: each BLAS call then runs on one thread."""

from __future__ import annotations

import numpy as np  # noqa: F401 - loads NumPy's BLAS, which threadpoolctl then finds
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from openeyesd.daemon import one_blas_thread_per_worker


def _blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


@pytest.fixture
def two_blas_threads():
    if not _blas_threads():
        pytest.skip("no BLAS library that threadpoolctl can see")
    with threadpool_limits(limits=2, user_api="blas"):  # restores the limits on exit
        if set(_blas_threads()) != {2}:
            pytest.skip("BLAS cannot run two threads on this machine")
        yield


def test_several_workers_get_one_blas_thread_each(two_blas_threads) -> None:
    one_blas_thread_per_worker(2)
    assert set(_blas_threads()) == {1}


def test_one_worker_keeps_the_default(two_blas_threads) -> None:
    before = _blas_threads()
    one_blas_thread_per_worker(1)
    assert _blas_threads() == before
