"""What the GPU stages declare they will load for a job (``models_needed``), and the model names
``GpuBackends`` answers with, all without torch: nothing here loads or builds a model."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from openeyesd.config import Config
from openeyesd.gpu.backends import GpuBackends
from openeyesd.ledger import Ledger
from openeyesd.stages.base import StageContext
from openeyesd.stages.generate import GenerateStage
from openeyesd.stages.restore import RestoreStage
from tests.unit.test_pipeline import claimed_context


def gpu_backends(make_config: Callable[..., Config], **gpu: str) -> GpuBackends:
    config = make_config(pipeline={"profile": "gpu"}, gpu={"device": "cuda:0", **gpu},
                         generation={"model": "sdxl-inpaint-0.1", "refiner": "sdxl-refiner-1.0"})
    return GpuBackends(config)


@pytest.fixture
def ctx(config: Config, ledger: Ledger) -> StageContext:
    return claimed_context(ledger, config)


def test_generate_needs_the_inpainter_only_for_a_face_without_donor(
    make_config: Callable[..., Config], ctx: StageContext
) -> None:
    stage = GenerateStage(toolkit=None, gpu=gpu_backends(make_config))  # type: ignore[arg-type]
    ctx.artifacts["fix"] = {"faces": [{"outcome": "fixed"}, {"outcome": "eyes_open"}]}
    assert stage.models_needed(ctx) == ()
    ctx.artifacts["fix"]["faces"].append({"outcome": "no_donor"})
    assert stage.models_needed(ctx) == ("inpaint:sdxl-inpaint-0.1", "refiner:sdxl-refiner-1.0")


def test_restore_needs_the_restorer_only_for_a_generated_face(
    make_config: Callable[..., Config], ctx: StageContext
) -> None:
    stage = RestoreStage(gpu=gpu_backends(make_config))
    ctx.artifacts["generate"] = {"faces": [{"outcome": "needs_review"}, {"outcome": "fixed"}]}
    assert stage.models_needed(ctx) == ()
    ctx.artifacts["generate"]["faces"].append({"outcome": "generated"})
    assert stage.models_needed(ctx) == ("restore:gfpgan-1.4",)


def test_a_restorer_on_a_gpu_of_its_own_or_none_at_all_never_takes_turns(
    make_config: Callable[..., Config]
) -> None:
    own = gpu_backends(make_config, generation_device="cuda:0", restoration_device="cuda:1")
    assert own.restoration_models() == ()
    assert gpu_backends(make_config, restoration_device="cuda:0").restoration_models() == (
        "restore:gfpgan-1.4",)
    config = make_config(pipeline={"profile": "gpu"}, restoration={"model": "none"})
    assert GpuBackends(config).restoration_models() == ()


def test_nothing_is_resident_before_a_model_was_built(make_config: Callable[..., Config]) -> None:
    assert gpu_backends(make_config).resident_models() == frozenset()
