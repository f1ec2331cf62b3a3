"""The face restorer on CPU with tiny random-weight GFPGAN and CodeFormer networks.

Checkpoints are written in the published format (``{"params_ema": state_dict}``) into a temp
models folder and read back by the real loading code (``build_restorer``). The faces are the
astronaut of scikit-image (public domain) found by the CPU landmark backend, twice side by side.
The published, full-size layouts are checked on the ``meta`` device (no memory, no compute)
against key names and shapes taken from the published sources; one slow test runs a full-size
GFPGAN forward pass.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from openeyesd.config import Config  # noqa: E402
from openeyesd.errors import BackendUnavailable, ConfigError, OutOfMemory  # noqa: E402
from openeyesd.eyes.types import Eye, Face  # noqa: E402
from openeyesd.gpu.arch.codeformer import CodeFormer, CodeFormerSpec  # noqa: E402
from openeyesd.gpu.arch.gfpgan import GFPGANClean, GFPGANSpec  # noqa: E402
from openeyesd.gpu.restorer import (  # noqa: E402
    FFHQ_TEMPLATE_512,
    RESTORERS,
    FaceRestorer,
    alignment_points,
    build_restorer,
    face_outline,
    similarity,
)

GFPGAN_TINY = GFPGANSpec(out_size=64, num_style_feat=32, channel_multiplier=1, num_mlp=2,
                         narrow=1 / 16)
CODEFORMER_TINY = CodeFormerSpec(size=64, nf=32, ch_mult=(1, 1, 2), res_blocks=2,
                                 attn_resolutions=(16,), codebook_size=64, emb_dim=32,
                                 dim_embd=32, n_layers=2, connect=(16, 32, 64))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def astronaut_face() -> tuple[np.ndarray, Face]:
    skimage_data = pytest.importorskip("skimage.data")
    from openeyesd.eyes.landmarks import FaceMeshBackend

    image = skimage_data.astronaut()
    faces = FaceMeshBackend().detect(image)
    assert len(faces) == 1
    return image, faces[0]


def _shifted(face: Face, dx: float) -> Face:
    move = np.array([dx, 0], np.float32)
    eyes = {side: Eye(side, eye.contour + move, eye.brow + move,
                      None if eye.iris is None else eye.iris + move)
            for side, eye in face.eyes.items()}
    x0, y0, x1, y1 = face.box
    return dataclasses.replace(face, box=(x0 + dx, y0, x1 + dx, y1), eyes=eyes,
                               landmarks=face.landmarks + move)


@pytest.fixture(scope="module")
def two_faces(astronaut_face: tuple[np.ndarray, Face]) -> tuple[np.ndarray, list[Face]]:
    """The astronaut twice, side by side: one photo with two faces."""
    image, face = astronaut_face
    return np.hstack([image, image]), [face, _shifted(face, image.shape[1])]


def _random_network(spec: GFPGANSpec | CodeFormerSpec, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = GFPGANClean(spec) if isinstance(spec, GFPGANSpec) else CodeFormer(spec)
    with torch.no_grad():  # zero-initialised tensors (biases, noise strength) too, so every
        for p in net.parameters():  # path of the network changes the output
            if not p.any():
                p.normal_(0, 0.1)
    return net


def _save(models_dir: Path, name: str, state: dict[str, Any]) -> Path:
    path = models_dir / name / RESTORERS[name].filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": state}, path)
    return path


@pytest.fixture
def restorer_config(make_config: Callable[..., Config], tmp_path: Path) -> Callable[..., Config]:
    def build(model: str, fidelity: float = 0.5, **models: Any) -> Config:
        return make_config(models={"dir": str(tmp_path / "models"), **models},
                           gpu={"device": "cpu", "precision": "fp16"},
                           restoration={"model": model, "fidelity": fidelity})
    return build


@pytest.fixture
def gfpgan(restorer_config: Callable[..., Config], tmp_path: Path) -> FaceRestorer:
    _save(tmp_path / "models", "gfpgan-1.4", _random_network(GFPGAN_TINY).state_dict())
    restorer = build_restorer(restorer_config("gfpgan-1.4"))
    assert restorer is not None
    return restorer


@pytest.fixture
def codeformer(restorer_config: Callable[..., Config], tmp_path: Path) -> FaceRestorer:
    _save(tmp_path / "models", "codeformer", _random_network(CODEFORMER_TINY).state_dict())
    restorer = build_restorer(restorer_config("codeformer", 0.3, allow_non_commercial=True))
    assert restorer is not None
    return restorer


def _face_region(shape: tuple[int, ...], faces: list[Face]) -> np.ndarray:
    """Union of the faces' outlines, grown by one pixel for the polygon's rasterisation."""
    mask = np.zeros(shape[:2], np.uint8)
    for face in faces:
        outline = face_outline(face)
        cv2.fillPoly(mask, [np.round(outline * 16).astype(np.int32)], 255, shift=4)
    return cv2.dilate(mask, np.ones((3, 3), np.uint8)) > 0


def _count_calls(net: torch.nn.Module) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append({"batch": args[0].shape[0], "size": tuple(args[0].shape[2:]), **kwargs})

    net.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


# --- restore ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gfpgan", "codeformer"])
def test_restore_changes_only_the_faces_in_one_batched_call(
    name: str, request: pytest.FixtureRequest, two_faces: tuple[np.ndarray, list[Face]]
) -> None:
    restorer: FaceRestorer = request.getfixturevalue(name)
    image, faces = two_faces
    calls = _count_calls(restorer.network)
    before = image.copy()

    result = restorer.restore(image, faces)

    assert np.array_equal(image, before), "the input must not be modified"
    assert result.image.shape == image.shape and result.image.dtype == np.uint8
    assert [(c["batch"], c["size"]) for c in calls] == [(2, (64, 64))]
    assert result.batch_sizes == (2,) and result.oom_retries == 0
    inside = _face_region(image.shape, faces)
    assert np.array_equal(result.image[~inside], image[~inside])
    changed = np.any(result.image != image, axis=2)
    for face, restored in zip(faces, result.faces, strict=True):
        x0, y0, x1, y1 = (round(v) for v in face.box)
        assert changed[y0:y1, x0:x1].mean() > 0.3, "the random network should alter the face"
        bx0, by0, bx1, by1 = restored.box
        assert bx0 < x0 + 10 and x1 - 10 < bx1 and by0 < y0 + 10 and y1 - 10 < by1
    boxes = np.zeros_like(changed)
    for bx0, by0, bx1, by1 in (f.box for f in result.faces):
        boxes[by0:by1, bx0:bx1] = True
    assert not np.any(changed & ~boxes), "every changed pixel lies in its face's box"
    assert set(result.timings) == {"align", "forward", "paste", "total"}


def test_codeformer_gets_the_fidelity_weight(
    codeformer: FaceRestorer, restorer_config: Callable[..., Config],
    two_faces: tuple[np.ndarray, list[Face]],
) -> None:
    image, faces = two_faces
    from_codebook = build_restorer(restorer_config("codeformer", 0.0, allow_non_commercial=True))
    assert from_codebook is not None
    faithful_calls = _count_calls(codeformer.network)
    codebook_calls = _count_calls(from_codebook.network)
    faithful = codeformer.restore(image, faces).image
    codebook = from_codebook.restore(image, faces).image
    assert [c["w"] for c in faithful_calls] == [0.3]
    assert [c["w"] for c in codebook_calls] == [0.0]
    assert not np.array_equal(faithful, codebook), "w must change CodeFormer's output"


def test_out_of_memory_halves_the_batch(
    gfpgan: FaceRestorer, two_faces: tuple[np.ndarray, list[Face]]
) -> None:
    image, faces = two_faces
    reference = gfpgan.restore(image, faces).image
    calls = _count_calls(gfpgan.network)

    def refuse_pairs(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if args[0].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    gfpgan.network.register_forward_pre_hook(refuse_pairs)
    result = gfpgan.restore(image, faces)
    assert [c["batch"] for c in calls] == [2, 1, 1]
    assert result.batch_sizes == (1, 1) and result.oom_retries == 1
    assert np.abs(result.image.astype(int) - reference).max() <= 1  # same faces, one at a time


def test_out_of_memory_with_one_face_raises(
    gfpgan: FaceRestorer, two_faces: tuple[np.ndarray, list[Face]]
) -> None:
    image, faces = two_faces
    calls = _count_calls(gfpgan.network)

    def refuse(_module: torch.nn.Module, _args: tuple[Any, ...]) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    gfpgan.network.register_forward_pre_hook(refuse)
    with pytest.raises(OutOfMemory, match="single 64px face"):
        gfpgan.restore(image, faces)
    assert [c["batch"] for c in calls] == [2, 1]


def test_no_faces_no_forward(gfpgan: FaceRestorer,
                             astronaut_face: tuple[np.ndarray, Face]) -> None:
    image, _ = astronaut_face
    calls = _count_calls(gfpgan.network)
    result = gfpgan.restore(image, [])
    assert calls == [] and result.faces == () and np.array_equal(result.image, image)


# --- loading ---------------------------------------------------------------------------------


def test_a_restorer_held_by_the_residency_manager_takes_turns_with_the_generator(
    gfpgan: FaceRestorer, restorer_config: Callable[..., Config],
    two_faces: tuple[np.ndarray, list[Face]],
) -> None:
    """Within a budget that holds the restorer or a generator-sized model but not both, each
    restore evicts the idle generator, and a restorer the manager dropped is read from its
    file again: same pixels every time."""
    from openeyesd.gpu.residency import ResidencyManager
    from openeyesd.gpu.torch_utils import tensor_bytes

    image, faces = two_faces
    expected = gfpgan.restore(image, faces).image
    size = tensor_bytes(gfpgan.network)
    manager = ResidencyManager(size * 2, "cpu")
    # 8 float32 outputs per input: 32 bytes per input, 1.5 x the restorer in all.
    manager.register("inpaint:big", lambda: torch.nn.Linear(3 * size // 64, 8, bias=False))
    held = build_restorer(restorer_config("gfpgan-1.4"), residency=manager)
    assert held is not None and held.network is None
    for _ in range(2):
        with manager.use("inpaint:big"):
            pass
        result = held.restore(image, faces)
        assert np.array_equal(result.image, expected) and "load" in result.timings
    models = {m.name: m for m in manager.stats().models}
    assert models["restore:gfpgan-1.4"].loads == 2  # evicted by the generator, read again
    assert models["restore:gfpgan-1.4"].location == "device" and models["inpaint:big"].loads == 2
    assert models["restore:gfpgan-1.4"].in_use == 0


def test_missing_weights_name_the_fetch_command(
    restorer_config: Callable[..., Config],
) -> None:
    with pytest.raises(BackendUnavailable, match=re.escape("openeyesctl models fetch gfpgan-1.4")):
        build_restorer(restorer_config("gfpgan-1.4"))


def test_codeformer_needs_non_commercial_consent(
    restorer_config: Callable[..., Config],
) -> None:
    with pytest.raises(ConfigError, match="non-commercial"):
        build_restorer(restorer_config("codeformer"))
    assert build_restorer(restorer_config("none")) is None


def test_foreign_or_damaged_checkpoints_are_refused(
    restorer_config: Callable[..., Config], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    config = restorer_config("gfpgan-1.4")
    path = _save(models, "gfpgan-1.4", _random_network(CODEFORMER_TINY).state_dict())
    foreign = re.escape("not a gfpgan-1.4 checkpoint: missing keys")
    with pytest.raises(BackendUnavailable, match=foreign):
        build_restorer(config)
    state = _random_network(GFPGAN_TINY).state_dict()
    _save(models, "gfpgan-1.4", {**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(BackendUnavailable, match=r"(?s)does not match.*extra\.weight"):
        build_restorer(config)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BackendUnavailable, match="cannot read"):
        build_restorer(config)


def test_safetensors_checkpoint_loads(
    restorer_config: Callable[..., Config], tmp_path: Path,
) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "models" / "gfpgan-1.4"
    folder.mkdir(parents=True)
    save_file(_random_network(GFPGAN_TINY).state_dict(), folder / "GFPGANv1.4.safetensors")
    restorer = build_restorer(restorer_config("gfpgan-1.4"))
    assert restorer is not None and restorer.size == 64


# --- geometry --------------------------------------------------------------------------------


def test_similarity_recovers_a_known_transform() -> None:
    angle, scale, shift = np.radians(12), 0.37, np.array([40.0, -7.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.random.default_rng(0).uniform(0, 500, (5, 2))
    matrix = similarity(src, src @ rot.T + shift)
    assert np.allclose(matrix, np.hstack([rot, shift[:, None]]))


def test_alignment_puts_the_face_on_the_ffhq_template(
    astronaut_face: tuple[np.ndarray, Face],
) -> None:
    _, face = astronaut_face
    points, template = alignment_points(face)
    assert len(points) == 5 and template is FFHQ_TEMPLATE_512
    landed = points @ similarity(points, template)[:, :2].T + similarity(points, template)[:, 2]
    # Each point lands within 20 template pixels (the astronaut's smile is wider than FFHQ's
    # mean mouth); a point out of order would miss by over 100 (eyes are 126 apart).
    assert np.abs(landed - template).max() < 20
    sparse = dataclasses.replace(face, landmarks=face.landmarks[:5])
    two, eyes_only = alignment_points(sparse)
    assert len(two) == 2 and np.array_equal(eyes_only, FFHQ_TEMPLATE_512[:2])


# --- the published layouts -------------------------------------------------------------------
# Shapes follow from the published definitions at the published settings:
# - GFPGANv1.4.pth: TencentARC/GFPGAN gfpgan/archs/gfpganv1_clean_arch.py and
#   stylegan2_clean_arch.py, built as in gfpgan/utils.py GFPGANer(arch="clean",
#   channel_multiplier=2): out_size=512, num_style_feat=512, num_mlp=8, narrow=1, sft_half,
#   different_w; loaded there with load_state_dict(loadnet["params_ema"], strict=True).
# - codeformer.pth: sczhou/CodeFormer basicsr/archs/codeformer_arch.py + vqgan_arch.py, built as
#   in inference_codeformer.py: CodeFormer(dim_embd=512, codebook_size=1024, n_head=8,
#   n_layers=9, connect_list=['32', '64', '128', '256']), checkpoint["params_ema"], strict.
# The signature keys are also those spandrel (chaiNNer-org/spandrel, and spandrel_extra_arches)
# detects these files by. Counts are of the same published modules' state_dicts.

GFPGAN_V14_SHAPES = {
    "conv_body_first.weight": (32, 3, 1, 1),
    "conv_body_down.0.conv1.weight": (32, 32, 3, 3),
    "conv_body_down.0.conv2.weight": (64, 32, 3, 3),
    "conv_body_down.6.skip.weight": (256, 256, 1, 1),
    "final_conv.weight": (256, 256, 3, 3),
    "final_linear.weight": (8192, 4096),
    "conv_body_up.6.conv1.weight": (64, 64, 3, 3),
    "conv_body_up.6.conv2.weight": (32, 64, 3, 3),
    "toRGB.6.weight": (3, 32, 1, 1),
    "condition_scale.6.2.weight": (32, 32, 3, 3),
    "condition_shift.0.0.weight": (256, 256, 3, 3),
    "stylegan_decoder.style_mlp.1.weight": (512, 512),
    "stylegan_decoder.style_mlp.15.weight": (512, 512),
    "stylegan_decoder.constant_input.weight": (1, 512, 4, 4),
    "stylegan_decoder.style_conv1.modulated_conv.weight": (1, 512, 512, 3, 3),
    "stylegan_decoder.style_conv1.weight": (1,),
    "stylegan_decoder.style_conv1.bias": (1, 512, 1, 1),
    "stylegan_decoder.style_convs.12.modulated_conv.modulation.weight": (128, 512),
    "stylegan_decoder.style_convs.13.modulated_conv.weight": (1, 64, 64, 3, 3),
    "stylegan_decoder.to_rgbs.6.modulated_conv.weight": (1, 3, 64, 1, 1),
    "stylegan_decoder.to_rgb1.bias": (1, 3, 1, 1),
    "stylegan_decoder.noises.noise0": (1, 1, 4, 4),
    "stylegan_decoder.noises.noise14": (1, 1, 512, 512),
}
CODEFORMER_SHAPES = {
    "position_emb": (256, 512),
    "feat_emb.weight": (512, 256),
    "quantize.embedding.weight": (1024, 256),
    "idx_pred_layer.0.weight": (512,),
    "idx_pred_layer.1.weight": (1024, 512),
    "ft_layers.8.self_attn.in_proj_weight": (1536, 512),
    "ft_layers.8.self_attn.out_proj.weight": (512, 512),
    "ft_layers.8.linear1.weight": (1024, 512),
    "encoder.blocks.0.weight": (64, 3, 3, 3),
    "encoder.blocks.4.conv_out.weight": (128, 64, 1, 1),
    "encoder.blocks.15.conv.weight": (256, 256, 3, 3),
    "encoder.blocks.17.q.weight": (512, 512, 1, 1),
    "encoder.blocks.23.weight": (512,),
    "encoder.blocks.24.weight": (256, 512, 3, 3),
    "generator.blocks.0.weight": (512, 256, 3, 3),
    "generator.blocks.8.conv.weight": (512, 512, 3, 3),
    "generator.blocks.9.conv_out.weight": (256, 512, 1, 1),
    "generator.blocks.24.weight": (3, 64, 3, 3),
    "fuse_convs_dict.256.encode_enc.conv_out.weight": (128, 256, 1, 1),
    "fuse_convs_dict.32.scale.2.weight": (256, 256, 3, 3),
}


def _meta_state(build: Callable[[], torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build().state_dict().items()}


def test_gfpgan_matches_the_published_layout() -> None:
    shapes = _meta_state(GFPGANClean)
    assert len(shapes) == 285
    assert {k: shapes.get(k) for k in GFPGAN_V14_SHAPES} == GFPGAN_V14_SHAPES
    assert set(RESTORERS["gfpgan-1.4"].signature) <= set(shapes)
    with torch.device("meta"):
        assert GFPGANSpec.from_state_dict(GFPGANClean().state_dict()) == GFPGANSpec()
        assert GFPGANSpec.from_state_dict(GFPGANClean(GFPGAN_TINY).state_dict()) == GFPGAN_TINY


def test_codeformer_matches_the_published_layout() -> None:
    shapes = _meta_state(CodeFormer)
    assert len(shapes) == 515
    assert {k: shapes.get(k) for k in CODEFORMER_SHAPES} == CODEFORMER_SHAPES
    assert set(RESTORERS["codeformer"].signature) <= set(shapes)
    with torch.device("meta"):
        net = CodeFormer()
        assert CodeFormerSpec.from_state_dict(net.state_dict()) == CodeFormerSpec()
        tiny = CodeFormerSpec.from_state_dict(CodeFormer(CODEFORMER_TINY).state_dict())
        assert tiny == CODEFORMER_TINY
    # The published fusion points (fuse_encoder_block / fuse_generator_block in
    # codeformer_arch.py), which our modules compute from the layout.
    assert net.encoder.taps == {512: 2, 256: 5, 128: 8, 64: 11, 32: 14, 16: 18}
    assert net.generator.taps == {16: 6, 32: 9, 64: 12, 128: 15, 256: 18, 512: 21}


@pytest.mark.slow
def test_full_size_gfpgan_restores_one_face(
    restorer_config: Callable[..., Config], tmp_path: Path,
    astronaut_face: tuple[np.ndarray, Face],
) -> None:
    """The published GFPGAN v1.4 size (87 M parameters, 512 px): one face, one forward pass."""
    image, face = astronaut_face
    _save(tmp_path / "models", "gfpgan-1.4", _random_network(GFPGANSpec()).state_dict())
    restorer = build_restorer(restorer_config("gfpgan-1.4"))
    assert restorer is not None and restorer.size == 512
    result = restorer.restore(image, [face])
    inside = _face_region(image.shape, [face])
    assert result.batch_sizes == (1,)
    assert np.array_equal(result.image[~inside], image[~inside])
    assert np.any(result.image[inside] != image[inside])
