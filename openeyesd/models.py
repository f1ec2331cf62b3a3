"""The GPU profile's model weights, as data (FaceFusion's ``create_static_model_set`` idea).

Every model the GPU backends can load is a ``ModelSpec`` in ``REGISTRY``: its files, where each
is downloaded from, the SHA-256 it must have, its licence and whether that licence allows
commercial use (studios are businesses). Nothing is downloaded at run time: ``openeyesctl
models fetch NAME`` puts the files under ``<models.dir>/<NAME>/`` and a backend is enabled only
when ``verify`` finds every file present, of the right size and hash, and the licence allowed
by ``models.allow_non_commercial``.

Hashes are pinned here only where they were published by someone else (Hugging Face shows
the SHA-256 of every LFS file; projects pin release assets in code); each comment says where.
Small diffusers config/tokenizer files are plain git blobs on the Hub, whose pages show no
SHA-256, so they have ``sha256=None``. Such a file cannot be verified: ``verify`` reports it,
and ``fetch`` refuses it unless the operator passes ``--trust-on-first-use``, which records the
hash of what was downloaded in ``<models.dir>/.pins.json``; from then on that recorded hash is
checked like a pinned one. Trust on first use only proves that later copies match the first
download, not that the first download was genuine: the URLs point at fixed revisions to keep
that window small.

Downloads go to ``<file>.part``, resume with an HTTP Range request, are hashed while they
stream, and are renamed into place only once they match, so a model file is either absent or
verified. A ``.part`` whose hash does not match is deleted (resuming corrupt bytes can never
succeed); one cut short by the network is kept so the next ``fetch`` resumes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from openeyesd.config import Config, Profile
from openeyesd.errors import OpenEyesError
from openeyesd.files import atomic_write_bytes

Role = Literal["landmarks", "inpaint", "refiner", "restorer"]

PINS_FILE = ".pins.json"
#: Hashes of installed files by (size, mtime), so `models list` and doctor do not re-read GBs
#: on every call. `models verify` ignores it and re-hashes everything.
HASH_CACHE_FILE = ".hashcache.json"
PART_SUFFIX = ".part"
CHUNK_BYTES = 1 << 20
#: Seconds without a byte from the server before a download is abandoned (and kept to resume).
TIMEOUT_S = 60.0
USER_AGENT = "openeyesd-models/1"


@dataclass(frozen=True)
class ModelFile:
    #: Path below ``<models.dir>/<model name>/``; the diffusers folder layout for pipelines.
    relative_path: str
    url: str
    #: Lower-case hex; None when no published hash was found (see the module docstring).
    sha256: str | None
    #: Exact byte count where published; None skips the size check (the hash still applies).
    size_bytes: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    role: Role
    files: tuple[ModelFile, ...]
    #: The page the files come from (model card or release page).
    source: str
    licence: str
    commercial_use_allowed: bool
    #: Rough GPU memory while loaded in fp16, for planning ``gpu.vram_budget_gb``.
    vram_gb: float
    #: Rough download size from the source's file listing, shown where exact sizes are unknown.
    download_gb: float
    notes: str = ""


@dataclass(frozen=True)
class Problem:
    model: str
    #: The file's relative path; None for problems of the whole model (licence).
    file: str | None
    #: missing | size_mismatch | sha_mismatch | no_pinned_hash | licence_refused
    kind: str
    message: str
    fix: str = ""


@dataclass
class FetchResult:
    model: str
    directory: Path
    downloaded: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    #: Files whose hash was recorded in .pins.json by --trust-on-first-use.
    pinned_on_first_use: list[str] = field(default_factory=list)


class ModelError(OpenEyesError):
    """A model cannot be found, fetched or enabled; ``fix`` says what the operator can do."""

    kind = "model"

    def __init__(self, message: str, *, kind: str | None = None, fix: str = "") -> None:
        super().__init__(message, kind=kind)
        self.fix = fix


#: Called with (file, bytes done, total bytes or None) while a file downloads.
Progress = Callable[[ModelFile, int, int | None], None]
Opener = Callable[..., Any]


# --- the registry --------------------------------------------------------------------------------

# InsightFace publishes buffalo_l only as buffalo_l.zip (github.com/deepinsight/insightface
# release v0.7). Its members are mirrored file by file in the Hub repo public-data/insightface;
# the SHA-256 and sizes below are the LFS details shown on its pages at this revision (the same
# values appear on other mirrors, e.g. the LFS pointers in huggingface.co/Aloukik21/z-image
# commits 3a03443 and 85da417).
_INSIGHTFACE_REV = "33c1063c49c785b7652d3fd529f86fa4f149392b"
_INSIGHTFACE = f"https://huggingface.co/public-data/insightface/resolve/{_INSIGHTFACE_REV}"

# diffusers/stable-diffusion-xl-1.0-inpainting-0.1: every weight file was added in commit
# 530d9a1 ("add model"); URLs use a later full revision seen on the Hub that still holds them.
_SDXL_INPAINT_REV = "115134f363124c53c7d878647567d04daf26e41e"
_SDXL_INPAINT = (
    f"https://huggingface.co/diffusers/stable-diffusion-xl-1.0-inpainting-0.1/resolve/"
    f"{_SDXL_INPAINT_REV}"
)
# stabilityai/stable-diffusion-xl-refiner-1.0 at commit 44e025f ("License, tags and diffusers
# updates (#1)"), the last change to every file listed below.
_SDXL_REFINER_REV = "44e025f3b2ebcf98ffa582d8472962dfd79bd21e"
_SDXL_REFINER = (
    f"https://huggingface.co/stabilityai/stable-diffusion-xl-refiner-1.0/resolve/"
    f"{_SDXL_REFINER_REV}"
)
# runwayml/stable-diffusion-inpainting was withdrawn; stable-diffusion-v1-5/stable-diffusion-
# inpainting re-publishes it (single "Initial commit" 8a4288a).
_SD15_INPAINT_REV = "8a4288a76071f7280aedbdb3253bdb9e9d5d84bb"
_SD15_INPAINT = (
    f"https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-inpainting/resolve/"
    f"{_SD15_INPAINT_REV}"
)

_CLIP_TOKENIZER = ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")


def _unpinned(base: str, paths: Iterable[str]) -> tuple[ModelFile, ...]:
    """Small git-blob files (configs, tokenizers): the Hub shows no SHA-256 for them."""
    return tuple(ModelFile(path, f"{base}/{path}", None) for path in paths)


def _tokenizer(base: str, folder: str) -> tuple[ModelFile, ...]:
    return _unpinned(base, (f"{folder}/{name}" for name in _CLIP_TOKENIZER))


_OPENRAIL_NOTE = (
    "Commercial use is allowed, subject to the licence's use restrictions (Attachment A), "
    "which pass on to anyone given the outputs or the weights."
)

BUFFALO_L = ModelSpec(
    name="buffalo_l",
    role="landmarks",
    files=(
        # SHA-256 from huggingface.co/public-data/insightface (LFS details, revision above).
        ModelFile("det_10g.onnx", f"{_INSIGHTFACE}/models/buffalo_l/det_10g.onnx",
                  "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91", 16923827),
        ModelFile("2d106det.onnx", f"{_INSIGHTFACE}/models/buffalo_l/2d106det.onnx",
                  "f001b856447c413801ef5c42091ed0cd516fcd21f2d6b79635b1e733a7109dbf", 5030888),
    ),
    source="https://github.com/deepinsight/insightface/tree/master/python-package",
    licence="InsightFace pretrained models: non-commercial research use only",
    commercial_use_allowed=False,
    vram_gb=0.5,
    download_gb=0.02,
    notes="The insightface code is MIT, but its model packs are released for non-commercial "
          "research only; commercial licences are sold by InsightFace. Only the SCRFD detector "
          "and the 106-point landmark model of the pack are used.",
)

SDXL_INPAINT = ModelSpec(
    name="sdxl-inpaint-0.1",
    role="inpaint",
    files=(
        *_unpinned(_SDXL_INPAINT, ("model_index.json", "scheduler/scheduler_config.json",
                                   "text_encoder/config.json", "text_encoder_2/config.json",
                                   "unet/config.json", "vae/config.json")),
        *_tokenizer(_SDXL_INPAINT, "tokenizer"),
        *_tokenizer(_SDXL_INPAINT, "tokenizer_2"),
        # No published SHA-256 found for the two fp16 text encoders of this repository.
        ModelFile("text_encoder/model.fp16.safetensors",
                  f"{_SDXL_INPAINT}/text_encoder/model.fp16.safetensors", None),
        ModelFile("text_encoder_2/model.fp16.safetensors",
                  f"{_SDXL_INPAINT}/text_encoder_2/model.fp16.safetensors", None),
        # SHA-256 from the file pages on huggingface.co/diffusers/stable-diffusion-xl-1.0-
        # inpainting-0.1 (blob/main, "Git LFS Details"); the same value is on duplicates of
        # the repository (e.g. Zedge/..., thingthatis/...).
        ModelFile("unet/diffusion_pytorch_model.fp16.safetensors",
                  f"{_SDXL_INPAINT}/unet/diffusion_pytorch_model.fp16.safetensors",
                  "6470840731e98cc16713ddf3ac7ee458c9fdbcb881a98c6727cd4a938f227d3f"),
        ModelFile("vae/diffusion_pytorch_model.fp16.safetensors",
                  f"{_SDXL_INPAINT}/vae/diffusion_pytorch_model.fp16.safetensors",
                  "4ad62825e5c8b31eefb77355ba6693785619bf7d669d9b1a6fd9f19dec6d65b3"),
    ),
    source="https://huggingface.co/diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
    licence="CreativeML Open RAIL++-M",
    commercial_use_allowed=True,
    vram_gb=10.0,
    download_gb=6.9,
    notes=_OPENRAIL_NOTE + " fp16 variant in the diffusers folder layout.",
)

SDXL_REFINER = ModelSpec(
    name="sdxl-refiner-1.0",
    role="refiner",
    files=(
        *_unpinned(_SDXL_REFINER, ("model_index.json", "scheduler/scheduler_config.json",
                                   "text_encoder_2/config.json", "unet/config.json",
                                   "vae/config.json")),
        *_tokenizer(_SDXL_REFINER, "tokenizer_2"),
        ModelFile("text_encoder_2/model.fp16.safetensors",
                  f"{_SDXL_REFINER}/text_encoder_2/model.fp16.safetensors", None),
        # SHA-256 from the Hub page of this file at commit 44e025f (seen on the byte-identical
        # duplicates frankjoshua/stable-diffusion-xl-refiner-1.0 and nmkd/...).
        ModelFile("unet/diffusion_pytorch_model.fp16.safetensors",
                  f"{_SDXL_REFINER}/unet/diffusion_pytorch_model.fp16.safetensors",
                  "3ea0376dcf065eaefd27806394a90e310001b1a71d4f1cf1f655e86c0e566ffe"),
        # Two different SHA-256 values are published for this file on different mirrors, so
        # none is pinned: trust on first use, from the fixed revision above.
        ModelFile("vae/diffusion_pytorch_model.fp16.safetensors",
                  f"{_SDXL_REFINER}/vae/diffusion_pytorch_model.fp16.safetensors", None),
    ),
    source="https://huggingface.co/stabilityai/stable-diffusion-xl-refiner-1.0",
    licence="CreativeML Open RAIL++-M",
    commercial_use_allowed=True,
    vram_gb=7.0,
    download_gb=6.1,
    notes=_OPENRAIL_NOTE + " Optional second pass (generation.refiner).",
)

SD15_INPAINT = ModelSpec(
    name="sd15-inpaint",
    role="inpaint",
    files=(
        *_unpinned(_SD15_INPAINT, ("model_index.json", "scheduler/scheduler_config.json",
                                   "text_encoder/config.json", "unet/config.json",
                                   "vae/config.json")),
        *_tokenizer(_SD15_INPAINT, "tokenizer"),
        # SHA-256 and size from the Hub page (blob/main) and the LFS pointer of the same file
        # in masterful/gligen-1-4-inpainting-text-box commit 181dde8.
        ModelFile("text_encoder/model.fp16.safetensors",
                  f"{_SD15_INPAINT}/text_encoder/model.fp16.safetensors",
                  "77795e2023adcf39bc29a884661950380bd093cf0750a966d473d1718dc9ef4e", 246144864),
        # SHA-256 from the Hub page of this file at revision 8a4288a.
        ModelFile("unet/diffusion_pytorch_model.fp16.safetensors",
                  f"{_SD15_INPAINT}/unet/diffusion_pytorch_model.fp16.safetensors",
                  "24b788b4a777748377cc20364eea4ae113c8c42f4468c16bc8c02fdae5492af9"),
        ModelFile("vae/diffusion_pytorch_model.fp16.safetensors",
                  f"{_SD15_INPAINT}/vae/diffusion_pytorch_model.fp16.safetensors", None),
    ),
    source="https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-inpainting",
    licence="CreativeML Open RAIL-M",
    commercial_use_allowed=True,
    vram_gb=3.5,
    download_gb=2.1,
    notes=_OPENRAIL_NOTE + " For smaller GPUs (generation.crop_size = 512). The safety "
          "checker is not downloaded: load the pipeline with safety_checker=None.",
)

GFPGAN_14 = ModelSpec(
    name="gfpgan-1.4",
    role="restorer",
    files=(
        # SHA-256 and size pinned in several public projects for this exact release asset,
        # e.g. the table in github.com/clibdev/GFPGAN-onnxruntime-demo README.md; the same
        # asset is also served under the v1.3.4 tag with the same hash.
        ModelFile("GFPGANv1.4.pth",
                  "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",
                  "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad", 348632874),
    ),
    source="https://github.com/TencentARC/GFPGAN/releases/tag/v1.3.0",
    licence="Apache-2.0 (weights released by Tencent ARC with the code)",
    commercial_use_allowed=True,
    vram_gb=1.5,
    download_gb=0.35,
    notes="GFPGAN's LICENSE is Apache-2.0 and the weights carry no separate terms; its "
          "LICENSE also lists third-party parts (StyleGAN2 CUDA ops under NVIDIA's "
          "licence) that the v1.4 'clean' architecture does not use.",
)

CODEFORMER = ModelSpec(
    name="codeformer",
    role="restorer",
    files=(
        # SHA-256 and size pinned for this release asset in several public projects' download
        # scripts and model manifests found by code search (no checksum on the release page).
        ModelFile("codeformer.pth",
                  "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",
                  "1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7", 376637898),
    ),
    source="https://github.com/sczhou/CodeFormer/releases/tag/v0.1.0",
    licence="NTU S-Lab License 1.0",
    commercial_use_allowed=False,
    vram_gb=1.5,
    download_gb=0.38,
    notes="S-Lab License 1.0 allows non-commercial use only; use gfpgan-1.4 in a studio.",
)

REGISTRY: tuple[ModelSpec, ...] = (
    BUFFALO_L, SDXL_INPAINT, SDXL_REFINER, SD15_INPAINT, GFPGAN_14, CODEFORMER,
)


# --- lookup --------------------------------------------------------------------------------------


def find(name: str, registry: Iterable[ModelSpec] | None = None) -> ModelSpec:
    specs = tuple(REGISTRY if registry is None else registry)
    for spec in specs:
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in specs)
    raise ModelError(f"unknown model {name!r}; known models: {known}", kind="unknown_model",
                     fix="openeyesctl models list")


def model_dir(config: Config, spec: ModelSpec) -> Path:
    return config.models.dir / spec.name


def models_in_use(config: Config) -> list[tuple[str, str]]:
    """(config key, model name) for every model the GPU profile would load with ``config``."""
    used = [("generation.model", config.generation.model)]
    if config.generation.refiner:
        used.append(("generation.refiner", config.generation.refiner))
    if config.restoration.model != "none":
        used.append(("restoration.model", config.restoration.model))
    # The landmarks backend is not configurable: the GPU profile always uses buffalo_l.
    used.append(("(gpu landmarks)", BUFFALO_L.name))
    return used


def gpu_profile(config: Config) -> bool:
    return config.pipeline.profile is Profile.GPU


# --- hashes on disk ------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}", kind="models_dir",
                         fix=f"fix or remove {path}") from None
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomic replace: a crash never leaves a half-written pins file behind."""
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode())


def _key(spec: ModelSpec, file: ModelFile) -> str:
    return f"{spec.name}/{file.relative_path}"


def read_pins(config: Config) -> dict[str, Any]:
    return _read_json(config.models.dir / PINS_FILE)


def expected_sha256(config: Config, spec: ModelSpec, file: ModelFile,
                    pins: Mapping[str, Any] | None = None) -> str | None:
    """The pinned hash, else the one recorded on first use, else None."""
    if file.sha256 is not None:
        return file.sha256
    pins = read_pins(config) if pins is None else pins
    entry = pins.get(_key(spec, file))
    return entry.get("sha256") if isinstance(entry, dict) else None


class _HashCache:
    """(size, mtime_ns) -> sha256 per installed file; a changed file is hashed again."""

    def __init__(self, config: Config, enabled: bool) -> None:
        self.path = config.models.dir / HASH_CACHE_FILE
        self.enabled = enabled
        self.entries = _read_json(self.path) if enabled else {}
        self.dirty = False

    def sha256(self, key: str, path: Path) -> str:
        stat = path.stat()
        entry = self.entries.get(key)
        if (self.enabled and isinstance(entry, dict) and entry.get("size") == stat.st_size
                and entry.get("mtime_ns") == stat.st_mtime_ns):
            return str(entry["sha256"])
        digest = sha256_file(path)
        self.remember(key, path, digest)
        return digest

    def remember(self, key: str, path: Path, digest: str) -> None:
        stat = path.stat()
        self.entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        # The cache only saves time: a read-only models folder (doctor run as another user)
        # must not turn into an error.
        with contextlib.suppress(OSError):
            _write_json(self.path, self.entries)


# --- verify --------------------------------------------------------------------------------------


def licence_problem(config: Config, spec: ModelSpec) -> Problem | None:
    if spec.commercial_use_allowed or config.models.allow_non_commercial:
        return None
    return Problem(spec.name, None, "licence_refused",
                   f"{spec.name}: licence {spec.licence!r} does not allow commercial use, and "
                   "models.allow_non_commercial is false",
                   "choose a model whose licence allows commercial use, or (only if this "
                   "installation is not used commercially) set allow_non_commercial = true "
                   "under [models] in config.toml")


def verify(config: Config, spec: ModelSpec, *, use_cache: bool = True) -> list[Problem]:
    """Every reason the model cannot be enabled; empty when it can. With ``use_cache`` a
    file whose size and mtime are unchanged since it was last hashed is not read again."""
    problems = [p for p in [licence_problem(config, spec)] if p is not None]
    pins = read_pins(config)
    cache = _HashCache(config, use_cache)
    try:
        for file in spec.files:
            problem = _verify_file(config, spec, file, pins, cache)
            if problem is not None:
                problems.append(problem)
    finally:
        cache.save()
    return problems


def _verify_file(config: Config, spec: ModelSpec, file: ModelFile, pins: Mapping[str, Any],
                 cache: _HashCache) -> Problem | None:
    path = model_dir(config, spec) / file.relative_path
    where = f"{spec.name}/{file.relative_path}"
    fetch_fix = f"openeyesctl models fetch {spec.name}"
    if not path.is_file():
        return Problem(spec.name, file.relative_path, "missing", f"{where}: missing ({path})",
                       fetch_fix + _tofu_hint(config, spec))
    size = path.stat().st_size
    if file.size_bytes is not None and size != file.size_bytes:
        return Problem(spec.name, file.relative_path, "size_mismatch",
                       f"{where}: {size} bytes, expected {file.size_bytes}",
                       f"delete {path} and run: {fetch_fix}")
    expected = expected_sha256(config, spec, file, pins)
    if expected is None:
        return Problem(spec.name, file.relative_path, "no_pinned_hash",
                       f"{where}: no pinned hash: cannot verify",
                       f"{fetch_fix} --trust-on-first-use (records its SHA-256 in "
                       f"{config.models.dir / PINS_FILE})")
    actual = cache.sha256(_key(spec, file), path)
    if actual != expected:
        return Problem(spec.name, file.relative_path, "sha_mismatch",
                       f"{where}: SHA-256 {actual} does not match the pinned {expected}",
                       f"delete {path} and run: {fetch_fix}")
    return None


def _tofu_hint(config: Config, spec: ModelSpec) -> str:
    pins = read_pins(config)
    needs = any(expected_sha256(config, spec, f, pins) is None for f in spec.files)
    return " --trust-on-first-use" if needs else ""


def is_enabled(config: Config, spec: ModelSpec) -> bool:
    return not verify(config, spec)


def installed_files(config: Config, spec: ModelSpec) -> int:
    """How many of the model's files exist (cheap: no hashing)."""
    root = model_dir(config, spec)
    return sum((root / file.relative_path).is_file() for file in spec.files)


# --- fetch ---------------------------------------------------------------------------------------


def fetch(config: Config, spec: ModelSpec, *, progress: Progress,
          opener: Opener = urllib.request.urlopen,
          trust_on_first_use: bool = False) -> FetchResult:
    """Download every missing or wrong file of ``spec`` and verify it; raises ModelError with
    a fix on any failure (the files already verified stay in place)."""
    refused = licence_problem(config, spec)
    if refused is not None:
        raise ModelError(refused.message, kind="licence_refused", fix=refused.fix)
    pins = read_pins(config)
    unpinned = [f.relative_path for f in spec.files
                if expected_sha256(config, spec, f, pins) is None]
    if unpinned and not trust_on_first_use:
        raise ModelError(
            f"{spec.name}: no pinned hash for {len(unpinned)} file(s) "
            f"({', '.join(unpinned)}): their download cannot be verified",
            kind="no_pinned_hash",
            fix=f"openeyesctl models fetch {spec.name} --trust-on-first-use (records the SHA-256 "
                f"of what is downloaded in {config.models.dir / PINS_FILE}; later copies are "
                "checked against it)")
    result = FetchResult(spec.name, model_dir(config, spec))
    cache = _HashCache(config, enabled=True)
    try:
        for file in spec.files:
            _fetch_file(config, spec, file, pins, cache, result, progress, opener)
    finally:
        cache.save()
    if result.pinned_on_first_use:
        _record_pins(config, spec, result.pinned_on_first_use, cache)
    return result


def _fetch_file(config: Config, spec: ModelSpec, file: ModelFile, pins: Mapping[str, Any],
                cache: _HashCache, result: FetchResult, progress: Progress,
                opener: Opener) -> None:
    target = model_dir(config, spec) / file.relative_path
    expected = expected_sha256(config, spec, file, pins)
    if target.is_file() and _matches(file, target, expected, cache, _key(spec, file)):
        result.already_present.append(file.relative_path)
        if expected is None:  # hand-copied and never pinned: trust on first use pins it
            result.pinned_on_first_use.append(file.relative_path)
        size = target.stat().st_size
        progress(file, size, size)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + PART_SUFFIX)
    digest = _download_with_errors(config, spec, file, part, progress, opener)
    _check_download(spec, file, part, digest, expected)
    os.replace(part, target)
    cache.remember(_key(spec, file), target, digest)
    result.downloaded.append(file.relative_path)
    if expected is None:
        result.pinned_on_first_use.append(file.relative_path)


def _matches(file: ModelFile, path: Path, expected: str | None, cache: _HashCache,
             key: str) -> bool:
    if file.size_bytes is not None and path.stat().st_size != file.size_bytes:
        return False
    return expected is None or cache.sha256(key, path) == expected


def _check_download(spec: ModelSpec, file: ModelFile, part: Path, digest: str,
                    expected: str | None) -> None:
    size = part.stat().st_size
    where = f"{spec.name}/{file.relative_path}"
    wrong = None
    if file.size_bytes is not None and size != file.size_bytes:
        wrong = f"{size} bytes, expected {file.size_bytes}"
    elif expected is not None and digest != expected:
        wrong = f"SHA-256 {digest}, expected {expected}"
    if wrong is None:
        return
    # Resuming from corrupt bytes can never produce the right file: start over next time.
    part.unlink(missing_ok=True)
    raise ModelError(f"{where}: the download does not match: {wrong}; nothing was enabled "
                     f"and the partial file was deleted", kind="sha_mismatch",
                     fix=f"run openeyesctl models fetch {spec.name} again; if it keeps failing, "
                         f"the file at {file.url} changed or the download is being tampered with")


def _record_pins(config: Config, spec: ModelSpec, paths: list[str], cache: _HashCache) -> None:
    pins_path = config.models.dir / PINS_FILE
    pins = _read_json(pins_path)
    now = datetime.now(UTC).isoformat()
    by_path = {file.relative_path: file for file in spec.files}
    for relative in paths:
        file = by_path[relative]
        target = model_dir(config, spec) / relative
        pins[_key(spec, file)] = {"sha256": cache.sha256(_key(spec, file), target),
                                  "size_bytes": target.stat().st_size, "url": file.url,
                                  "pinned_at": now, "how": "trust-on-first-use"}
    _write_json(pins_path, pins)


def _download_with_errors(config: Config, spec: ModelSpec, file: ModelFile, part: Path,
                          progress: Progress, opener: Opener) -> str:
    """``_download`` with network failures turned into ModelErrors saying what to do."""
    by_hand = (f"no network? copy the files into {model_dir(config, spec)} by hand "
               f"(the paths under file_list in `openeyesctl models list --json`), then "
               f"`openeyesctl models verify {spec.name}`")
    try:
        return _download(file, part, progress, opener)
    except urllib.error.HTTPError as exc:
        raise ModelError(f"downloading {file.url} failed: HTTP {exc.code} {exc.reason}",
                         kind="download_failed",
                         fix=f"check that the URL is reachable from this machine; {by_hand}"
                         ) from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError,
            ConnectionError) as exc:
        reason = getattr(exc, "reason", None) or exc
        kept = f"; {part.stat().st_size} bytes kept in {part}" if part.exists() else ""
        raise ModelError(f"downloading {file.url} failed: {reason}{kept}",
                         kind="network",
                         fix=f"run the same command again (it resumes); {by_hand}") from None
    except OSError as exc:  # after the network errors above, which are OSErrors too
        raise ModelError(f"cannot write {part}: {exc.strerror or exc}", kind="models_dir",
                         fix=f"free space on, or give this user write access to, "
                             f"{config.models.dir} (models.dir)") from None


def _download(file: ModelFile, part: Path, progress: Progress, opener: Opener) -> str:
    """Stream ``file.url`` into ``part``, continuing an existing ``part`` with a Range
    request; returns the SHA-256 of the whole file."""
    digest = hashlib.sha256()
    offset = _resume_offset(part, file.size_bytes)
    if offset:
        with part.open("rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                digest.update(chunk)
        if offset == file.size_bytes:
            return digest.hexdigest()
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = opener(urllib.request.Request(file.url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing after `offset`: the .part is already whole
            return digest.hexdigest()
        raise
    with response:
        status = getattr(response, "status", None) or response.getcode()
        if offset and (status != 206 or not _range_starts_at(response, offset)):
            digest, offset = hashlib.sha256(), 0  # Range ignored: the body is the whole file
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else file.size_bytes
        _stream(response, part, offset, digest, lambda done: progress(file, done, total))
    done = part.stat().st_size
    if total is not None and done < total:
        raise ConnectionError(f"connection closed after {done} of {total} bytes")
    return digest.hexdigest()


def _resume_offset(part: Path, expected_size: int | None) -> int:
    if not part.exists():
        return 0
    size = part.stat().st_size
    if expected_size is not None and size > expected_size:
        part.unlink()  # longer than the real file: cannot be a prefix of it
        return 0
    return size


def _range_starts_at(response: Any, offset: int) -> bool:
    content_range = response.headers.get("Content-Range", "")
    # "bytes 100-999/1000": the body must start exactly where the .part ends.
    return content_range.startswith(f"bytes {offset}-")


def _stream(response: Any, part: Path, offset: int, digest: Any,
            report: Callable[[int], None]) -> None:
    done = offset
    report(done)
    with part.open("ab" if offset else "wb") as out:
        while chunk := response.read(CHUNK_BYTES):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            report(done)
        out.flush()
        os.fsync(out.fileno())


# --- summaries for the CLI and doctor ------------------------------------------------------------


def status_of(config: Config, spec: ModelSpec, problems: list[Problem]) -> str:
    """One word for tables: verified, missing, partial, unverified, corrupt or refused."""
    kinds = {problem.kind for problem in problems}
    if not problems:
        return "verified"
    if "licence_refused" in kinds:
        return "refused"
    present = installed_files(config, spec)
    if present == 0:
        return "missing"
    if "missing" in kinds:
        return "partial"
    if kinds & {"size_mismatch", "sha_mismatch"}:
        return "corrupt"
    return "unverified"


def total_size(spec: ModelSpec) -> tuple[int, bool]:
    """(sum of the published sizes, whether every file's size is published)."""
    sizes = [file.size_bytes for file in spec.files]
    return sum(size or 0 for size in sizes), all(size is not None for size in sizes)
