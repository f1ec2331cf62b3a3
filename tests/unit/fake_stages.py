"""Small stages for testing the pipeline loop and the worker without images."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openeyesd.config import Config
from openeyesd.files import atomic_write_bytes
from openeyesd.stages.base import Artifact, StageContext


@dataclass
class RecordingStage:
    name: str
    version: str = "1"
    setting: str = "a"
    calls: list[int] = field(default_factory=list)
    behaviour: Callable[[StageContext], None] | None = None

    def settings(self, config: Config) -> dict[str, Any]:
        return {"setting": self.setting}

    def run(self, ctx: StageContext) -> Artifact:
        self.calls.append(ctx.job.id)
        if self.behaviour is not None:
            self.behaviour(ctx)
        path = ctx.stage_dir(self.name) / "out.bin"
        atomic_write_bytes(path, f"{self.name}:{self.setting}".encode())
        return {"files": [ctx.relative(path)], "written": True, "outcome": "passthrough",
                "output_path": None}
