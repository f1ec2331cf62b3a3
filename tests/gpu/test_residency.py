"""ResidencyManager with fake sized models and with real tiny torch modules on CPU."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from openeyesd.config import GpuConfig  # noqa: E402
from openeyesd.errors import ConfigError, InfraError, OutOfMemory  # noqa: E402
from openeyesd.gpu.residency import ResidencyManager, budget_bytes  # noqa: E402
from openeyesd.gpu.torch_utils import tensor_bytes  # noqa: E402


class FakeModel:
    """A "model" of a declared size that records where it was moved."""

    def __init__(self, name: str, nbytes: int) -> None:
        self.name = name
        self.nbytes = nbytes
        self.device = "cpu"
        self.moves: list[str] = []

    def to(self, device: torch.device) -> FakeModel:
        self.device = str(device)
        self.moves.append(self.device)
        return self


class Registry:
    """Loaders that count their calls, so tests can tell a reload from a hit."""

    def __init__(self, manager: ResidencyManager) -> None:
        self.manager = manager
        self.loads: dict[str, int] = {}

    def add(self, name: str, nbytes: int, *, estimate: bool = True) -> None:
        def load() -> FakeModel:
            self.loads[name] = self.loads.get(name, 0) + 1
            return FakeModel(name, nbytes)

        self.manager.register(name, load, estimate_bytes=nbytes if estimate else None)


def _locations(manager: ResidencyManager) -> dict[str, str]:
    return {m.name: m.location for m in manager.stats().models}


def _touch(manager: ResidencyManager, *names: str) -> None:
    for name in names:
        with manager.use(name):
            pass


def test_loads_on_first_use_and_evicts_the_least_recently_used() -> None:
    manager = ResidencyManager(100, "cpu")
    reg = Registry(manager)
    for name in ("base", "refiner", "restorer"):
        reg.add(name, 40)
    assert reg.loads == {}, "nothing loads at registration"
    _touch(manager, "base", "refiner", "base", "restorer")
    # base was used after refiner, so refiner is the least recently used and goes.
    assert _locations(manager) == {"base": "device", "refiner": "unloaded", "restorer": "device"}
    assert manager.stats().used_bytes == 80
    _touch(manager, "base")
    assert reg.loads == {"base": 1, "refiner": 1, "restorer": 1}
    stats = {m.name: m for m in manager.stats().models}
    assert stats["base"].hits == 2 and stats["refiner"].evictions == 1


def test_a_model_in_use_is_never_evicted_and_the_request_times_out() -> None:
    manager = ResidencyManager(100, "cpu", wait_timeout_s=0.05)
    reg = Registry(manager)
    reg.add("base", 60)
    reg.add("restorer", 60)
    with manager.use("base") as base:
        with pytest.raises(OutOfMemory, match="in use by other jobs: base") as info:
            manager.acquire("restorer")
        assert isinstance(info.value, InfraError)
        assert base.device == "cpu" and _locations(manager)["base"] == "device"
    _touch(manager, "restorer")
    assert _locations(manager) == {"base": "unloaded", "restorer": "device"}


def test_a_waiting_request_proceeds_when_the_other_thread_releases() -> None:
    manager = ResidencyManager(100, "cpu", wait_timeout_s=5.0)
    reg = Registry(manager)
    reg.add("base", 60)
    reg.add("restorer", 60)
    holding = threading.Event()

    def hold_base() -> None:
        with manager.use("base"):
            holding.set()
            time.sleep(0.1)

    worker = threading.Thread(target=hold_base)
    worker.start()
    holding.wait(2)
    start = time.monotonic()
    with manager.use("restorer") as restorer:
        waited = time.monotonic() - start
        assert restorer.name == "restorer"
    worker.join()
    assert waited >= 0.05, "it had to wait for the release"


def test_a_model_larger_than_the_budget_is_an_infrastructure_error() -> None:
    manager = ResidencyManager(100, "cpu")
    reg = Registry(manager)
    reg.add("huge", 150)
    reg.add("huge-unestimated", 150, estimate=False)
    with pytest.raises(OutOfMemory, match="vram_budget_gb"):
        manager.acquire("huge")
    assert reg.loads == {}, "refused before loading, from the estimate"
    with pytest.raises(OutOfMemory, match="vram_budget_gb"):
        manager.acquire("huge-unestimated")
    assert reg.loads == {"huge-unestimated": 1}
    assert manager.stats().used_bytes == 0 and _locations(manager)["huge-unestimated"] == "unloaded"


def test_a_low_estimate_is_corrected_after_loading() -> None:
    manager = ResidencyManager(100, "cpu")
    manager.register("a", lambda: FakeModel("a", 50), estimate_bytes=10)
    manager.register("b", lambda: FakeModel("b", 60), estimate_bytes=10)
    _touch(manager, "a", "b")
    assert _locations(manager) == {"a": "unloaded", "b": "device"}
    assert manager.stats().used_bytes == 60


def test_evicted_models_go_to_cpu_memory_and_come_back_without_reloading() -> None:
    # A CUDA device name is enough: fake models only record the moves.
    manager = ResidencyManager(100, "cuda:0", cpu_budget_bytes=100)
    reg = Registry(manager)
    for name in ("base", "refiner", "restorer"):
        reg.add(name, 60)
    _touch(manager, "base")
    with manager.use("refiner"):
        pass
    assert _locations(manager) == {"base": "cpu", "refiner": "device", "restorer": "unloaded"}
    with manager.use("base") as base:
        assert base.moves == ["cuda:0", "cpu", "cuda:0"]
    assert reg.loads == {"base": 1, "refiner": 1}
    assert manager.stats().cpu_bytes == 60
    # CPU memory is budgeted too: a second offloaded model pushes the older one out.
    _touch(manager, "restorer")
    _touch(manager, "refiner")
    assert _locations(manager) == {"base": "unloaded", "refiner": "device", "restorer": "cpu"}


def test_unload_clear_and_misuse() -> None:
    manager = ResidencyManager(100, "cpu")
    reg = Registry(manager)
    reg.add("a", 30)
    reg.add("b", 30)
    _touch(manager, "a", "b")
    manager.unload("a")
    assert _locations(manager)["a"] == "unloaded"
    _touch(manager, "a")
    assert reg.loads["a"] == 2
    with manager.use("b"), pytest.raises(RuntimeError, match="in use"):
        manager.unload("b")
    manager.clear()
    assert manager.stats().used_bytes == 0
    with pytest.raises(KeyError, match="registered: a, b"):
        manager.acquire("c")
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        manager.release("a")


def test_many_threads_never_exceed_the_budget() -> None:
    manager = ResidencyManager(100, "cpu", wait_timeout_s=10.0)
    reg = Registry(manager)
    names = [f"m{i}" for i in range(4)]
    for name in names:
        reg.add(name, 45)
    errors: list[BaseException] = []
    peaks: list[int] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(40):
                with manager.use(rng.choice(names)) as model:
                    peaks.append(manager.stats().used_bytes)
                    assert model.nbytes == 45
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(peaks) == 240 and max(peaks) <= 100
    assert all(m.in_use == 0 for m in manager.stats().models)


def test_real_torch_modules_are_sized_by_their_tensors() -> None:
    torch.manual_seed(0)
    size = tensor_bytes(torch.nn.Linear(128, 128))
    assert size == (128 * 128 + 128) * 4
    manager = ResidencyManager(2 * size + 10, "cpu")
    built: list[str] = []

    def loader(name: str) -> Any:
        def load() -> torch.nn.Module:
            built.append(name)
            return torch.nn.Sequential(torch.nn.Linear(128, 128))

        return load

    for name in ("a", "b", "c"):
        manager.register(name, loader(name))
    _touch(manager, "a", "b")
    assert manager.stats().used_bytes == 2 * size
    with manager.use("c") as module:
        out = module(torch.ones(1, 128))
        assert out.shape == (1, 128)
    assert _locations(manager) == {"a": "unloaded", "b": "device", "c": "device"}
    _touch(manager, "a")
    assert built == ["a", "b", "c", "a"]
    stats = manager.stats().as_dict()
    assert stats["budget_bytes"] == 2 * size + 10 and stats["device"] == "cpu"
    assert {m["name"]: m["bytes"] for m in stats["models"]} == {"a": size, "b": 0, "c": size}


def test_budget_from_config() -> None:
    assert budget_bytes(GpuConfig(vram_budget_gb=1.5), torch.device("cpu")) == int(1.5 * 1024**3)
    with pytest.raises(ConfigError, match=r"set gpu\.vram_budget_gb"):
        budget_bytes(GpuConfig(vram_budget_gb=0), torch.device("cpu"))
