"""Fixtures shared by every test layer: a config on temp folders and a migrated ledger."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from openeyesd.config import Config, parse_config
from openeyesd.ledger import Ledger, create_ledger_engine, migrate

# Heavy numeric libraries default to one thread per core; the CI machine has two cores and
# runs many tests: keep them to one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def config_dict(root: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A minimal valid raw config on folders under ``root``; ``sections`` override keys."""
    raw: dict[str, Any] = {
        "watch": [{"path": str(root / "incoming"), "stability_window_s": 0.2,
                   "poll_interval_s": 0.1}],
        "output": {"path": str(root / "outgoing")},
        "state": {"dir": str(root / "state"), "min_free_mb": 1},
        "worker": {"idle_poll_s": 0.05, "heartbeat_s": 0.2, "lease_s": 5},
        "retry": {"base_delay_s": 0.01, "max_delay_s": 0.05},
        "log": {"format": "console", "level": "warning"},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(raw.get(name), dict):
            raw[name] = {**raw[name], **values}
        else:
            raw[name] = values
    return raw


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    def build(**sections: dict[str, Any]) -> Config:
        config = parse_config(config_dict(tmp_path, **sections), base_dir=tmp_path)
        for folder in config.watch:
            folder.path.mkdir(parents=True, exist_ok=True)
        return config

    return build


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config()


@pytest.fixture
def ledger(config: Config) -> Iterator[Ledger]:
    engine = create_ledger_engine(config.ledger_url)
    migrate.upgrade(engine)
    yield Ledger(engine)
    engine.dispose()
