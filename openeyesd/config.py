"""Load and validate ``config.toml`` into typed, immutable objects.

Nothing here is global: ``load_config`` returns a ``Config`` that the daemon and
``openeyesctl`` pass explicitly to whatever needs it. Relative paths in the file are resolved
against the directory of the config file, not the current directory, so the same file means
the same folders under systemd and in a shell.

Every key is documented in the example ``config.toml`` at the top of the repository.
"""

from __future__ import annotations

import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from openeyesd.errors import ConfigError

CONFIG_ENV_VAR = "OPENEYES_CONFIG"
SYSTEM_CONFIG = Path("/etc/openeyes/config.toml")

PositiveSeconds = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WatchMode(StrEnum):
    INOTIFY = "inotify"
    POLL = "poll"


class WatchFolder(_Section):
    path: Path
    mode: WatchMode = WatchMode.INOTIFY
    poll_interval_s: PositiveSeconds = 5.0
    recursive: bool = True
    stability_window_s: Annotated[float, Field(ge=0)] = 3.0


class OutputConfig(_Section):
    path: Path
    #: File name template; {stem} and {suffix} come from the original ("IMG_1.jpg" -> "IMG_1",
    #: ".jpg"). The relative folder below the watched folder is always kept.
    naming: str = "{stem}{suffix}"
    sidecar: bool = True
    #: Write photos that needed no fix (no faces, eyes open) too, so the output folder holds the
    #: complete set. When false those jobs end as "skipped" with nothing written.
    copy_unchanged: bool = True

    @field_validator("naming")
    @classmethod
    def _naming_keeps_suffix(cls, value: str) -> str:
        if "{stem}" not in value or not value.endswith("{suffix}"):
            raise ValueError(
                "must contain {stem} and end with {suffix}, e.g. '{stem}_fixed{suffix}'"
            )
        return value


class OriginalsAction(StrEnum):
    KEEP = "keep"
    ARCHIVE = "archive"
    DELETE = "delete"


class OriginalsConfig(_Section):
    #: keep: leave the file where it was dropped. archive: move it to archive_path after the
    #: output is safely written. delete: remove it after the output is safely written.
    action: OriginalsAction = OriginalsAction.KEEP
    archive_path: Path | None = None


class LedgerConfig(_Section):
    #: SQLAlchemy URL. "{state_dir}" is replaced by the state directory.
    url: str = "sqlite:///{state_dir}/ledger.sqlite3"
    busy_timeout_s: PositiveSeconds = 30.0


class StateConfig(_Section):
    dir: Path = Path("state")
    #: Days to keep a finished job's work directory (private copy + stage artifacts), and a
    #: cached face analysis nobody has read.
    keep_artifacts_days: Annotated[float, Field(ge=0)] = 7.0
    #: Days to keep the work directory of failed jobs (for diagnosis).
    keep_failed_days: Annotated[float, Field(ge=0)] = 30.0
    #: Refuse to claim new jobs below this much free space in the state or output folder.
    min_free_mb: Annotated[int, Field(ge=0)] = 500


class WorkerConfig(_Section):
    concurrency: Annotated[int, Field(ge=1, le=64)] = 1
    lease_s: Annotated[float, Field(ge=5)] = 120.0
    heartbeat_s: PositiveSeconds = 10.0
    idle_poll_s: PositiveSeconds = 1.0
    reclaim_interval_s: PositiveSeconds = 60.0
    rescan_interval_s: PositiveSeconds = 300.0
    retention_interval_s: PositiveSeconds = 3600.0
    #: How long an infrastructure error (backend missing, GPU out of memory) pauses the worker.
    infra_pause_s: PositiveSeconds = 60.0
    #: A worker that shows no progress inside a stage for this long stops feeding systemd's
    #: watchdog, so systemd restarts the daemon and the job resumes from its last artifact.
    stall_timeout_s: PositiveSeconds = 900.0
    #: On SIGTERM, how long to wait for running stages to finish (keep below TimeoutStopSec).
    stop_timeout_s: PositiveSeconds = 60.0


class RetryConfig(_Section):
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    base_delay_s: PositiveSeconds = 10.0
    max_delay_s: PositiveSeconds = 3600.0
    #: Fraction of each delay that is randomised, so a burst of failures does not retry in step.
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.25


class AnimatedPolicy(StrEnum):
    FIRST_FRAME = "first_frame"
    REFUSE = "refuse"


class LimitsConfig(_Section):
    #: Decompression-bomb guard: images above this many pixels are refused before decoding.
    max_pixels: Annotated[int, Field(ge=1)] = 150_000_000
    max_file_mb: Annotated[float, Field(gt=0)] = 1024.0
    animated: AnimatedPolicy = AnimatedPolicy.FIRST_FRAME


class LogFormat(StrEnum):
    AUTO = "auto"
    CONSOLE = "console"
    JSON = "json"


class LogConfig(_Section):
    #: auto: JSON when running under systemd (JOURNAL_STREAM set), console otherwise.
    format: LogFormat = LogFormat.AUTO
    level: str = "info"

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        allowed = ("debug", "info", "warning", "error")
        if value.lower() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value.lower()


class Profile(StrEnum):
    CPU = "cpu"
    GPU = "gpu"


class BlendMethodName(StrEnum):
    POISSON = "poisson"
    PYRAMID = "pyramid"
    FEATHER = "feather"


class EyesConfig(_Section):
    """The CPU eye stages: find faces, judge each eye, take open eyes from a burst frame."""

    #: Photos of one folder whose capture times are closer than this chain into one burst.
    session_gap_s: Annotated[float, Field(gt=0)] = 3.0
    #: A photo with closed eyes waits until its folder has had no new photo for this long, so
    #: the frames taken just after it can serve as donors.
    session_quiet_s: Annotated[float, Field(ge=0)] = 10.0
    #: Folders of reference portraits (donors only, never outputs), for every session. A
    #: sub-folder named "references" next to the photos serves the photos beside it.
    references: tuple[Path, ...] = ()
    blend: BlendMethodName = BlendMethodName.POISSON
    #: Faces narrower than this (pixels) are too small to judge or fix: their eyes are "unknown".
    #: From here up to ~60 px (eyes under 10 px) an eye is only ever read closed, where the
    #: landmarks draw both eyes' lids shut (docs/assess.md, "Small faces").
    min_face_px: Annotated[int, Field(ge=16)] = 40
    #: Longest side of the downscaled copy faces are searched on (landmarks are then refined
    #: on full-resolution crops).
    detect_max_side: Annotated[int, Field(ge=256)] = 1280
    #: Memory (MiB) for the pixels around the eyes of recently assessed photos, shared by the
    #: workers: a fix takes a donor's eyes from here instead of decoding the donor again
    #: (about 1-2 MiB a face at 12-24 MP). 0 turns it off.
    donor_regions_mb: Annotated[float, Field(ge=0)] = 128.0


class ModelsConfig(_Section):
    """Weights of the GPU profile: downloaded by `openeyesctl models fetch` into ``dir``,
    verified by SHA-256 before a backend is enabled. The CPU profile needs none of this."""

    dir: Path = Path("models")
    #: Refuse models whose licence forbids commercial use (InsightFace packs, CodeFormer).
    allow_non_commercial: bool = False


class Precision(StrEnum):
    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"


class OnnxProvider(StrEnum):
    CUDA = "cuda"
    TENSORRT = "tensorrt"
    ROCM = "rocm"
    CPU = "cpu"


class LandmarksBackendName(StrEnum):
    MEDIAPIPE = "mediapipe"
    INSIGHTFACE = "insightface"


class GpuConfig(_Section):
    #: torch device for everything, e.g. "cuda:0"; "cpu" for development without a GPU.
    device: str = "cuda:0"
    #: "mediapipe" (default; the closed-eye rule was calibrated on its eyelid contours) or
    #: "insightface" (buffalo_l through onnxruntime; non-commercial licence).
    landmarks: LandmarksBackendName = LandmarksBackendName.MEDIAPIPE
    #: Optional overrides: put generation and restoration on two GPUs ("" = ``device``).
    generation_device: str = ""
    restoration_device: str = ""
    precision: Precision = Precision.FP16
    #: onnxruntime execution provider for the InsightFace landmarks; falls back to CPU with a
    #: loud warning when the requested one is not available.
    landmarks_provider: OnnxProvider = OnnxProvider.CUDA
    #: Models stay loaded while they fit in this much GPU memory (GiB); 0 = 90 % of the card.
    vram_budget_gb: Annotated[float, Field(ge=0)] = 0.0
    #: Let a loaded model serve many queued jobs before it is swapped: a job whose next stage
    #: needs a model that is not loaded goes back to the queue while other jobs can use what
    #: is loaded (or have earlier stages to run). Matters when the budget cannot hold the
    #: generator and the restorer together.
    group_jobs: bool = True
    #: A stage's model is loaded anyway once this many jobs wait for it.
    group_max_jobs: Annotated[int, Field(ge=1)] = 16
    #: A job is never held back by grouping for longer than this (seconds, from its first wait).
    group_max_wait_s: Annotated[float, Field(ge=0)] = 300.0


class GenerationConfig(_Section):
    """SDXL (or SD 1.5) inpainting of the eye region, for faces with no donor."""

    #: A name from `openeyesctl models list` with role "inpaint".
    model: str = "sdxl-inpaint-0.1"
    #: Optional refiner pass (a model name with role "refiner"), "" for none.
    refiner: str = ""
    #: Side of the square crop around the eyes fed to the model (SDXL: 1024; SD 1.5: 512).
    crop_size: Annotated[int, Field(ge=64, multiple_of=8)] = 1024
    steps: Annotated[int, Field(ge=1, le=200)] = 20
    strength: Annotated[float, Field(gt=0, le=1)] = 0.75
    guidance_scale: Annotated[float, Field(ge=0)] = 5.0
    scheduler: str = "euler_a"
    #: Variations generated in one batch; the best by score is kept.
    variations: Annotated[int, Field(ge=1, le=16)] = 4
    prompt: str = "a photo of a person with open eyes, natural eyes, sharp focus"
    negative_prompt: str = "closed eyes, blurry, deformed iris, cross-eyed, cartoon"
    #: 0: a random seed per job (recorded in the sidecar); otherwise fixed.
    seed: Annotated[int, Field(ge=0)] = 0
    #: torch.compile the UNet (slow first job, faster after).
    compile: bool = False


class RestorationConfig(_Section):
    #: "gfpgan-1.4" (commercial use allowed), "codeformer" (non-commercial), or "none".
    model: str = "gfpgan-1.4"
    #: CodeFormer's fidelity weight w: 0 = most restoration, 1 = most faithful.
    fidelity: Annotated[float, Field(ge=0, le=1)] = 0.7


class PipelineConfig(_Section):
    profile: Profile = Profile.CPU
    #: Stored with every job: the same photo is processed again only when this changes.
    version: str = "1"


class Config(_Section):
    watch: tuple[WatchFolder, ...] = Field(min_length=1)
    output: OutputConfig
    originals: OriginalsConfig = OriginalsConfig()
    ledger: LedgerConfig = LedgerConfig()
    state: StateConfig = StateConfig()
    worker: WorkerConfig = WorkerConfig()
    retry: RetryConfig = RetryConfig()
    limits: LimitsConfig = LimitsConfig()
    log: LogConfig = LogConfig()
    pipeline: PipelineConfig = PipelineConfig()
    eyes: EyesConfig = EyesConfig()
    models: ModelsConfig = ModelsConfig()
    gpu: GpuConfig = GpuConfig()
    generation: GenerationConfig = GenerationConfig()
    restoration: RestorationConfig = RestorationConfig()
    #: Where the file was loaded from (set by load_config, not read from the file).
    source: Path | None = None

    @property
    def ledger_url(self) -> str:
        return self.ledger.url.replace("{state_dir}", str(self.state.dir))

    @property
    def jobs_dir(self) -> Path:
        return self.state.dir / "jobs"

    @property
    def analysis_dir(self) -> Path:
        """Per-photo face analysis, by content hash: shared by a burst's jobs as donors."""
        return self.state.dir / "analysis"


def find_config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """--config, then $OPENEYES_CONFIG, then ./config.toml, then /etc/openeyes/config.toml."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get(CONFIG_ENV_VAR):
        return Path(env)
    local = Path("config.toml")
    return local if local.exists() else SYSTEM_CONFIG


def load_config(path: str | os.PathLike[str]) -> Config:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found; pass --config PATH or set ${CONFIG_ENV_VAR}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(raw, base_dir=path.resolve().parent, source=path.resolve())


def parse_config(raw: dict[str, Any], *, base_dir: Path, source: Path | None = None) -> Config:
    try:
        config = Config.model_validate({**raw, "source": source})
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, source)) from None
    config = _resolve_paths(config, base_dir)
    _check_consistency(config)
    return config


def _describe_validation_error(exc: ValidationError, source: Path | None) -> str:
    lines = [f"{source or 'config'}: invalid configuration:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        value = error.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {key}: {error['msg']}{shown}")
    return "\n".join(lines)


def _resolve_paths(config: Config, base_dir: Path) -> Config:
    def absolute(path: Path) -> Path:
        return path if path.is_absolute() else (base_dir / path)

    watch = tuple(
        folder.model_copy(update={"path": absolute(folder.path)}) for folder in config.watch
    )
    output = config.output.model_copy(update={"path": absolute(config.output.path)})
    state = config.state.model_copy(update={"dir": absolute(config.state.dir)})
    archive = config.originals.archive_path
    originals = config.originals.model_copy(
        update={"archive_path": absolute(archive) if archive else None}
    )
    eyes = config.eyes.model_copy(
        update={"references": tuple(absolute(path) for path in config.eyes.references)}
    )
    models = config.models.model_copy(update={"dir": absolute(config.models.dir)})
    return config.model_copy(
        update={"watch": watch, "output": output, "state": state, "originals": originals,
                "eyes": eyes, "models": models}
    )


def _check_consistency(config: Config) -> None:
    """Rules that span keys: the output must never be written into a watched folder."""
    output = config.output.path.resolve()
    for index, folder in enumerate(config.watch):
        watched = folder.path.resolve()
        if output == watched or output.is_relative_to(watched) or watched.is_relative_to(output):
            raise ConfigError(
                f"output.path ({output}) overlaps watch[{index}].path ({watched}); the output "
                "folder must be outside every watched folder, or outputs would be re-ingested"
            )
    state = config.state.dir.resolve()
    for index, folder in enumerate(config.watch):
        watched = folder.path.resolve()
        if state == watched or state.is_relative_to(watched) or watched.is_relative_to(state):
            raise ConfigError(
                f"state.dir ({state}) overlaps watch[{index}].path ({watched}); private copies "
                "of photos live in the state folder and would be picked up again"
            )
    for path in config.eyes.references:
        for index, folder in enumerate(config.watch):
            if path.resolve().is_relative_to(folder.path.resolve()):
                raise ConfigError(
                    f"eyes.references ({path}) is inside watch[{index}].path; its portraits "
                    "would be processed as photos. Move it out, or name the folder "
                    "'references' (such sub-folders are never queued)"
                )
    if config.originals.action is OriginalsAction.ARCHIVE:
        if config.originals.archive_path is None:
            raise ConfigError("originals.action = 'archive' needs originals.archive_path")
        archive = config.originals.archive_path.resolve()
        for index, folder in enumerate(config.watch):
            if archive.is_relative_to(folder.path.resolve()):
                raise ConfigError(
                    f"originals.archive_path ({archive}) is inside watch[{index}].path; "
                    "archived originals would be picked up again"
                )
    if config.retry.base_delay_s > config.retry.max_delay_s:
        raise ConfigError(
            f"retry.base_delay_s ({config.retry.base_delay_s}) is larger than "
            f"retry.max_delay_s ({config.retry.max_delay_s})"
        )
