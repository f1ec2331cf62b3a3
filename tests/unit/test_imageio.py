"""openeyesd.imageio: refusing bad input before decoding, upright 8-bit analysis copies, and
outputs that keep the original's format, mode, orientation, metadata and untouched pixels.

Every image is made here, in tmp_path.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, ImageOps
from PIL.Image import Transpose

from openeyesd import imageio
from openeyesd.config import AnimatedPolicy, LimitsConfig
from openeyesd.errors import (
    AnimatedImage,
    CorruptImage,
    EmptyFile,
    FileTooLarge,
    InfraError,
    NotAnImage,
    SourceMissing,
    SourcePermissionDenied,
    TooManyPixels,
    UnsupportedFormat,
)
from openeyesd.imageio import Patch, load_rgb, probe, write_json, write_output

LIMITS = LimitsConfig()
#: Upright (y0, y1, x0, x1) of the rectangle the "fix" paints in write tests.
RECT = (8, 20, 12, 30)
RED = (230, 20, 30)


def photo(width: int = 64, height: int = 48) -> np.ndarray:
    """A smooth, asymmetric picture: every orientation mistake changes it."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 255 * x / (width - 1)
    green = 255 * y / (height - 1)
    blue = 128 + 100 * np.sin(x / 7.0) * np.cos(y / 5.0)
    picture = np.stack([red, green, blue], axis=2)
    picture[2:8, 2:14] = (250, 250, 250)  # a white bar in the top-left corner
    return np.clip(picture, 0, 255).astype(np.uint8)


def paint(pixels: np.ndarray, rect: tuple[int, int, int, int] = RECT) -> np.ndarray:
    y0, y1, x0, x1 = rect
    fixed = pixels.copy()
    fixed[y0:y1, x0:x1] = RED
    return fixed


def painted(pixels: np.ndarray, rect: tuple[int, int, int, int] = RECT) -> list[Patch]:
    """What a fix stage hands ``write_output`` for ``paint(pixels, rect)``: the new pixels of
    the rectangle, as an upright patch."""
    y0, y1, x0, x1 = rect
    return [Patch((x0, y0, x1, y1), paint(pixels, rect)[y0:y1, x0:x1].copy())]


def outside(rect: tuple[int, int, int, int], shape: tuple[int, ...], margin: int) -> np.ndarray:
    y0, y1, x0, x1 = rect
    mask = np.ones(shape[:2], dtype=bool)
    mask[max(0, y0 - margin) : y1 + margin, max(0, x0 - margin) : x1 + margin] = False
    return mask


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def exif_with(orientation: int = 1, **tags: Any) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "StudioCam"
    exif[0x0110] = "Model 7"
    if orientation != 1:
        exif[0x0112] = orientation
    for tag, value in tags.items():
        exif[int(tag.lstrip("t"))] = value
    return exif


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def stored_for(upright: Image.Image, orientation: int) -> Image.Image:
    """The stored pixels that display as ``upright`` under ``orientation`` (Pillow's own
    transpose, independent of the module's numpy version)."""
    if orientation == 1:
        return upright
    to_upright = {2: Transpose.FLIP_LEFT_RIGHT, 3: Transpose.ROTATE_180,
                  4: Transpose.FLIP_TOP_BOTTOM, 5: Transpose.TRANSPOSE, 6: Transpose.ROTATE_270,
                  7: Transpose.TRANSVERSE, 8: Transpose.ROTATE_90}[orientation]
    inverse = {Transpose.ROTATE_90: Transpose.ROTATE_270,
               Transpose.ROTATE_270: Transpose.ROTATE_90}.get(to_upright, to_upright)
    return upright.transpose(inverse)


# --- bad input: one test each ------------------------------------------------------------------


def test_zero_byte_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    with pytest.raises(EmptyFile, match="0 bytes"):
        probe(path, LIMITS)


def test_truncated_jpeg_is_corrupt_and_original_untouched(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    buffer = io.BytesIO()
    Image.fromarray(photo(256, 192)).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path.write_bytes(data)
    assert probe(path, LIMITS).format == "JPEG"  # the header is intact
    with pytest.raises(CorruptImage) as caught:
        load_rgb(path, LIMITS)
    assert caught.value.kind == "corrupt_image"
    assert "truncated" in caught.value.message and "openeyesctl retry" in caught.value.message
    assert path.read_bytes() == data
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_truncated_png_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    buffer = io.BytesIO()
    Image.fromarray(photo(256, 192)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(CorruptImage):
        load_rgb(path, LIMITS)


def test_text_named_jpg_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("Order 42: 12 prints, matte\n")
    with pytest.raises(NotAnImage, match="not an image") as caught:
        probe(path, LIMITS)
    assert caught.value.kind == "not_an_image"


@pytest.mark.parametrize(
    ("name", "content"),
    [("photo.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"), ("scan.ppm", None)],
)
def test_other_image_formats_are_unsupported(
    tmp_path: Path, name: str, content: bytes | None
) -> None:
    path = tmp_path / name
    if content is None:
        Image.fromarray(photo(16, 16)).save(path, "PPM")
    else:
        path.write_bytes(content + b"\x00" * 64)
    with pytest.raises(UnsupportedFormat, match="export the photo as JPEG"):
        probe(path, LIMITS)


def test_file_above_max_file_mb_is_refused_before_opening(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(photo()).save(path)
    with pytest.raises(FileTooLarge, match=r"limits\.max_file_mb") as caught:
        probe(path, LimitsConfig(max_file_mb=0.0001))
    assert caught.value.kind == "file_too_large"


def test_more_pixels_than_max_pixels_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.fromarray(photo(200, 100)).save(path)
    with pytest.raises(TooManyPixels, match=r"raise limits.max_pixels in config.toml"):
        probe(path, LimitsConfig(max_pixels=19_999))
    assert probe(path, LimitsConfig(max_pixels=20_000)).pixels == 20_000


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb_png(path: Path, side: int = 30_000) -> None:
    """A valid 1-bit black side×side PNG, streamed so it is never in memory (≈ 110 KB)."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    block = row * 1000
    idat = b"".join(compressor.compress(block) for _ in range(side // 1000))
    idat += compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    write_bomb_png(path)
    return path


def test_decompression_bomb_is_refused_without_decoding(
    bomb: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert bomb.stat().st_size < 500_000

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("probe decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    started = time.perf_counter()
    for limits in (LIMITS, LimitsConfig(max_pixels=2_000_000_000)):
        with pytest.raises(TooManyPixels, match="900,000,000 pixels") as caught:
            probe(bomb, limits)
        assert caught.value.kind == "too_many_pixels"
    with pytest.raises(TooManyPixels):
        load_rgb(bomb, LIMITS)
    assert time.perf_counter() - started < 2
    assert pillow_limit == Image.MAX_IMAGE_PIXELS  # Pillow's global left alone


def test_decompression_bomb_probe_allocates_no_pixels(bomb: Path) -> None:
    """Peak RSS in a fresh process: decoding would take ≥ 112 MB (mode 1) or 900 MB (L)."""
    script = textwrap.dedent(
        f"""
        import resource
        from pathlib import Path
        from openeyesd.config import LimitsConfig
        from openeyesd.errors import TooManyPixels
        from openeyesd.imageio import probe
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            probe(Path({str(bomb)!r}), LimitsConfig(max_pixels=2_000_000_000))
        except TooManyPixels:
            pass
        else:
            raise SystemExit("not refused")
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    grown_kib = int(result.stdout.strip())
    assert grown_kib < 50 * 1024, f"peak RSS grew by {grown_kib} KiB"


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_first_frame_policy_uses_frame_one(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"anim.{fmt.lower()}"
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    frames = [Image.new("RGB", (32, 24), colour) for colour in colours]
    options = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, **options)

    loaded = load_rgb(path, LimitsConfig(animated=AnimatedPolicy.FIRST_FRAME))

    assert loaded.info.is_animated and loaded.info.n_frames == 3
    assert f"animated {fmt}: used frame 1 of 3 (frames)" in loaded.notes
    assert np.abs(loaded.pixels.astype(int) - colours[0]).max() <= 2
    out = tmp_path / "out" / path.name
    notes = write_output(path, loaded, out, patches=painted(loaded.pixels, (2, 6, 2, 6)))
    assert any("only the fixed frame 1 of 3" in note for note in notes)
    with Image.open(out) as written:
        assert written.format == fmt and getattr(written, "n_frames", 1) == 1
    if fmt == "WEBP":  # lossless; a GIF maps the fix to its 3-colour palette instead
        assert load_rgb(out, LIMITS).pixels[3, 3].tolist() == list(RED)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_refuse_policy(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"anim.{fmt.lower()}"
    frames = [Image.new("RGB", (16, 16), (i * 80, 0, 0)) for i in range(3)]
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(AnimatedImage, match=r"limits\.animated = 'first_frame'") as caught:
        probe(path, LimitsConfig(animated=AnimatedPolicy.REFUSE))
    assert "3 frames" in caught.value.message


def test_permission_denied_says_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "locked.jpg"
    Image.fromarray(photo()).save(path)
    real_open = builtins.open

    def denying_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, os.PathLike)) and Path(file) == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denying_open)  # tests run as root: simulate
    with pytest.raises(SourcePermissionDenied) as caught:
        load_rgb(path, LIMITS)
    assert caught.value.kind == "permission_denied"
    assert "permissions" in caught.value.message
    assert "openeyesctl retry ID" in caught.value.message


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(SourceMissing, match="disappeared"):
        probe(tmp_path / "gone.jpg", LIMITS)


# --- loading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_every_exif_orientation_loads_upright_and_writes_back(
    tmp_path: Path, orientation: int, fmt: str
) -> None:
    upright = photo(64, 48)
    path = tmp_path / f"o{orientation}.{fmt.lower()}"
    stored = stored_for(Image.fromarray(upright), orientation)
    options: dict[str, Any] = {"exif": exif_with(orientation)}
    if fmt == "JPEG":
        options |= {"quality": 95, "subsampling": 0}
    if fmt == "TIFF":  # both of Pillow's TIFF paths: its own, and libtiff for compression
        options["compression"] = "tiff_lzw" if orientation % 2 else "raw"
    stored.save(path, fmt, **options)
    exact = fmt != "JPEG"

    loaded = load_rgb(path, LIMITS)

    assert loaded.info.orientation == orientation
    assert (loaded.info.width, loaded.info.height) == stored.size
    assert loaded.pixels.shape == (48, 64, 3)
    with Image.open(path) as oracle:  # Pillow's own idea of upright
        expected = np.asarray(ImageOps.exif_transpose(oracle).convert("RGB"))
    if exact:
        assert np.array_equal(loaded.pixels, upright)
    assert np.array_equal(loaded.pixels, expected)
    assert (f"EXIF orientation {orientation} applied" in loaded.notes) == (orientation != 1)

    fixed = paint(loaded.pixels)
    out = tmp_path / "out" / path.name
    write_output(path, loaded, out, patches=painted(loaded.pixels))
    again = load_rgb(out, LIMITS)
    with Image.open(out) as written:
        assert written.getexif().get(0x0112, 1) == orientation
        assert written.format == fmt
        if fmt == "TIFF":
            assert written.info["compression"] == options["compression"]
    assert (again.info.width, again.info.height) == stored.size
    y0, y1, x0, x1 = RECT
    patch = again.pixels[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].astype(int)
    assert np.abs(patch - RED).max() <= (0 if exact else 12)
    keep = outside(RECT, fixed.shape, 0 if exact else 16)
    if exact:
        assert np.array_equal(again.pixels[keep], loaded.pixels[keep])
    else:
        assert psnr(again.pixels[keep], loaded.pixels[keep]) > 45


def test_transpose_array_matches_pillow_and_inverts() -> None:
    picture = photo(9, 5)
    for method in Transpose:
        expected = np.asarray(Image.fromarray(picture).transpose(method))
        turned = imageio.transpose_array(picture, method)
        assert np.array_equal(turned, expected), method
        back = imageio.transpose_array(turned, imageio.inverse_transpose(method))
        assert np.array_equal(back, picture), method


@pytest.mark.parametrize("orientation", range(1, 9))
def test_stored_box_is_where_the_upright_crop_lies(orientation: int) -> None:
    stored = photo(9, 5)
    method = {2: Transpose.FLIP_LEFT_RIGHT, 3: Transpose.ROTATE_180,
              4: Transpose.FLIP_TOP_BOTTOM, 5: Transpose.TRANSPOSE, 6: Transpose.ROTATE_270,
              7: Transpose.TRANSVERSE, 8: Transpose.ROTATE_90}.get(orientation)
    upright = stored if method is None else imageio.transpose_array(stored, method)
    for box in [(0, 0, 1, 1), (1, 2, 4, 3), (0, 0, upright.shape[1], upright.shape[0])]:
        x0, y0, x1, y1 = imageio.stored_box(box, orientation, (9, 5))
        crop = stored[y0:y1, x0:x1]
        turned = crop if method is None else imageio.transpose_array(crop, method)
        assert np.array_equal(turned, upright[box[1]:box[3], box[0]:box[2]]), box


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("fmt", ["JPEG", "TIFF", "PNG"])
def test_regions_are_the_crops_of_the_loaded_frame(
    tmp_path: Path, orientation: int, fmt: str
) -> None:
    path = tmp_path / f"r.{fmt.lower()}"
    stored_for(Image.fromarray(photo(64, 48)), orientation).save(
        path, fmt, exif=exif_with(orientation))
    whole = load_rgb(path, LIMITS).pixels
    info, regions = imageio.load_rgb_regions(path, LIMITS, [(5, 7, 30, 20), (-9, 40, 70, 99)])
    assert (info.upright_width, info.upright_height) == (64, 48)
    assert [box for box, _ in regions] == [(5, 7, 30, 20), (0, 40, 64, 48)]
    for (x0, y0, x1, y1), pixels in regions:
        assert np.array_equal(pixels, whole[y0:y1, x0:x1])


@pytest.mark.parametrize("orientation", [1, 6, 7])
def test_overlapping_patches_later_wins_and_nothing_else_moves(
    tmp_path: Path, orientation: int
) -> None:
    path = tmp_path / "two.png"
    stored_for(Image.fromarray(photo(64, 48)), orientation).save(
        path, exif=exif_with(orientation))
    loaded = load_rgb(path, LIMITS)
    expected = loaded.pixels.copy()
    first = np.full((10, 12, 3), (10, 200, 10), np.uint8)
    second = loaded.pixels[12:20, 16:40].copy()  # partly the photo's own pixels
    second[2:6, 4:20] = (0, 0, 250)
    patches = [Patch((10, 5, 22, 15), first), Patch((16, 12, 40, 20), second)]
    expected[5:15, 10:22], expected[12:20, 16:40] = first, second

    out = tmp_path / "out.png"
    assert write_output(path, loaded, out, patches=patches) == []

    again = load_rgb(out, LIMITS)
    assert again.info.orientation == orientation
    assert np.array_equal(again.pixels, expected)


def test_write_output_copies_no_full_frame(tmp_path: Path) -> None:
    """numpy and Python allocations while writing a small change into a 3 MP JPEG stay well
    below one decoded frame (Pillow's own decode buffer is not traced and not counted)."""
    import tracemalloc

    path = tmp_path / "big.jpg"
    Image.fromarray(cv2.resize(photo(), (2000, 1500))).save(path, quality=90)
    loaded = load_rgb(path, LIMITS)
    decoded = loaded.pixels.nbytes
    patches = painted(loaded.pixels, (600, 700, 800, 960))
    tracemalloc.start()
    try:
        write_output(path, loaded, tmp_path / "out.jpg", patches=patches)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < decoded / 3, f"traced peak {peak} bytes for a {decoded}-byte frame"


def test_multi_picture_jpeg_is_not_animated(tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    main, depth = Image.fromarray(photo()), Image.fromarray(photo()[::-1].copy())
    main.save(path, "MPO", save_all=True, append_images=[depth], exif=exif_with(1))
    info = probe(path, LimitsConfig(animated=AnimatedPolicy.REFUSE))
    assert (info.format, info.n_frames, info.is_animated) == ("JPEG", 2, False)
    loaded = load_rgb(path, LIMITS)
    assert psnr(loaded.pixels, photo()) > 30  # the primary picture, not the second
    out = tmp_path / "out.jpg"
    notes = write_output(path, loaded, out, patches=painted(loaded.pixels))
    assert notes == ["multi-picture JPEG: only the primary picture of 2 was written"]
    data = out.read_bytes()
    assert b"MPF\x00" not in data  # its offsets would point at pictures we did not write
    with Image.open(out) as written:
        assert written.format == "JPEG" and written.getexif()[0x010F] == "StudioCam"


def test_cmyk_jpeg_loads_as_rgb_and_stays_cmyk(tmp_path: Path) -> None:
    path = tmp_path / "press.jpg"
    # Pillow writes CMYK JPEGs the Adobe way (inverted, with an APP14 marker).
    Image.fromarray(photo()).convert("CMYK").save(path, "JPEG", quality=95)
    loaded = load_rgb(path, LIMITS)
    assert loaded.info.mode == "CMYK"
    assert any("CMYK JPEG converted to RGB" in note for note in loaded.notes)
    assert loaded.pixels.dtype == np.uint8 and loaded.pixels.shape == (48, 64, 3)
    assert psnr(loaded.pixels, photo()) > 30

    out = tmp_path / "out.jpg"
    write_output(path, loaded, out, patches=painted(loaded.pixels))
    with Image.open(out) as written, Image.open(path) as source:
        assert written.mode == "CMYK" and written.size == (64, 48)
        assert written.quantization == source.quantization
        rgb = np.asarray(written.convert("RGB"))
    y0, y1, x0, x1 = RECT
    assert np.abs(rgb[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].astype(int) - RED).mean() < 8


def test_rgb_to_cmyk_is_the_inverse_of_pillows_conversion() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    rgb[0, :3] = [(0, 0, 0), (255, 255, 255), (0, 0, 255)]
    cmyk = imageio._rgb_to_cmyk(rgb)
    back = np.asarray(Image.fromarray(cmyk, "CMYK").convert("RGB")).astype(int)
    assert np.abs(back - rgb).max() <= 1
    assert cmyk[0, 0].tolist() == [0, 0, 0, 255]  # black goes to K


def gray16() -> np.ndarray:
    y, x = np.mgrid[0:48, 0:64]
    return ((x * 1000 + y * 37 + 11) % 65536).astype(np.uint16)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_gray_stays_16bit_and_untouched_pixels_identical(tmp_path: Path, fmt: str) -> None:
    values = gray16()
    path = tmp_path / f"deep.{fmt.lower()}"
    options = {"compression": "tiff_adobe_deflate"} if fmt == "TIFF" else {}
    Image.fromarray(values).save(path, fmt, **options)
    loaded = load_rgb(path, LIMITS)
    assert loaded.info.bits == 16
    assert f"16-bit {fmt} reduced to 8-bit for analysis" in loaded.notes
    expected8 = ((values.astype(int) * 255 + 32767) // 65535).astype(np.uint8)
    assert np.array_equal(loaded.pixels[..., 0], expected8)

    fixed = paint(loaded.pixels)
    out = tmp_path / f"out.{fmt.lower()}"
    write_output(path, loaded, out, patches=painted(loaded.pixels))
    with Image.open(out) as written:
        assert written.mode.startswith("I;16")
        if fmt == "TIFF":
            assert written.info["compression"] == "tiff_adobe_deflate"
        result = np.asarray(written).astype(np.uint16)
    keep = outside(RECT, values.shape, 0)
    assert np.array_equal(result[keep], values[keep])
    y0, y1, x0, x1 = RECT
    luma = int(np.asarray(Image.new("RGB", (1, 1), RED).convert("L"))[0, 0])
    assert (result[y0:y1, x0:x1] == luma * 257).all()
    assert np.array_equal(load_rgb(out, LIMITS).pixels, _gray_like(fixed))


def _gray_like(fixed: np.ndarray) -> np.ndarray:
    gray = np.asarray(Image.fromarray(fixed).convert("L"))
    return np.repeat(gray[..., None], 3, axis=2)


@pytest.mark.parametrize("ext", [".png", ".tiff"])
def test_16bit_rgb_stays_16bit_and_untouched_pixels_identical(tmp_path: Path, ext: str) -> None:
    rng = np.random.default_rng(2)
    bgr = rng.integers(0, 65536, (48, 64, 3), dtype=np.uint16)
    path = tmp_path / f"deep{ext}"
    assert cv2.imwrite(str(path), bgr)
    loaded = load_rgb(path, LIMITS)
    assert loaded.info.bits == 16 and loaded.info.mode == "RGB"
    assert any("16-bit" in note for note in loaded.notes)

    out = tmp_path / f"out{ext}"
    notes = write_output(path, loaded, out, patches=painted(loaded.pixels))
    result = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert result.dtype == np.uint16 and result.shape == bgr.shape
    keep = outside(RECT, bgr.shape, 0)
    assert np.array_equal(result[keep], bgr[keep])
    y0, y1, x0, x1 = RECT
    assert (result[y0:y1, x0:x1] == np.array(RED[::-1], dtype=np.uint16) * 257).all()
    assert ext == ".png" or any("not kept" in note for note in notes)


def test_one_bit_and_palette_images_load(tmp_path: Path) -> None:
    bits = tmp_path / "line.png"
    Image.fromarray(photo()).convert("1").save(bits)
    palette = tmp_path / "pal.png"
    Image.fromarray(photo()).convert("P", palette=Image.Palette.ADAPTIVE).save(palette)
    for path, mode in ((bits, "1"), (palette, "P")):
        loaded = load_rgb(path, LIMITS)
        assert loaded.info.mode == mode and loaded.pixels.shape == (48, 64, 3)
        out = tmp_path / f"out-{path.name}"
        write_output(path, loaded, out, patches=painted(loaded.pixels))
        with Image.open(out) as written, Image.open(path) as source:
            assert written.mode == mode
            keep = outside(RECT, (48, 64), 0)
            assert np.array_equal(np.asarray(written)[keep], np.asarray(source)[keep])
            if mode == "P":
                assert written.getpalette() == source.getpalette()


# --- writing -----------------------------------------------------------------------------------


def test_jpeg_keeps_exif_icc_iptc_qtables_comment_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "portrait.jpg"
    exif = exif_with(1, t306="2024:05:01 10:00:00").tobytes()
    icc = srgb_icc()
    Image.fromarray(photo(256, 192)).save(
        path, "JPEG", quality=88, subsampling=2, exif=exif, icc_profile=icc, comment=b"studio 4"
    )
    # An IPTC block (APP13), which Pillow cannot write: only the verbatim splice keeps it.
    iptc = b"Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00\x00\x00\x0b\x1c\x02t\x00\x05(c) S"
    app13 = b"\xff\xed" + struct.pack(">H", len(iptc) + 2) + iptc
    path.write_bytes(path.read_bytes()[:2] + app13 + path.read_bytes()[2:])
    os.utime(path, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    loaded = load_rgb(path, LIMITS)
    assert loaded.info.jpeg_subsampling == 2 and loaded.info.jpeg_qtables
    rect = (64, 96, 80, 144)  # MCU-aligned
    out = tmp_path / "out" / "portrait.jpg"

    write_output(path, loaded, out, patches=painted(loaded.pixels, rect))

    with Image.open(out) as written, Image.open(path) as source:
        assert written.info["exif"] == source.info["exif"]
        assert written.info["icc_profile"] == icc
        assert written.info["comment"] == b"studio 4"
        assert written.quantization == source.quantization
        from PIL import JpegImagePlugin

        assert JpegImagePlugin.get_sampling(written) == 2
    assert out.stat().st_mtime_ns == 1_500_000_000_987_654_321
    assert app13 in out.read_bytes()
    result = load_rgb(out, LIMITS).pixels
    keep = outside(rect, result.shape, 16)  # blocks sharing an MCU with the change may move
    assert psnr(result[keep], loaded.pixels[keep]) > 45
    y0, y1, x0, x1 = rect
    assert np.abs(result[y0 + 4 : y1 - 4, x0 + 4 : x1 - 4].astype(int) - RED).max() <= 16


def test_png_keeps_untouched_pixels_and_all_chunks(tmp_path: Path) -> None:
    from PIL import PngImagePlugin

    path = tmp_path / "scan.png"
    text = PngImagePlugin.PngInfo()
    text.add_text("Author", "Studio Ü")
    text.add_itxt("Description", "Fotografía", lang="es")
    Image.fromarray(photo()).save(
        path, pnginfo=text, icc_profile=srgb_icc(), dpi=(300, 300), exif=exif_with(1)
    )
    loaded = load_rgb(path, LIMITS)
    out = tmp_path / "out.png"
    write_output(path, loaded, out, patches=painted(loaded.pixels))
    with Image.open(out) as written, Image.open(path) as source:
        written.load()
        source.load()
        assert written.text == source.text
        assert written.info["icc_profile"] == source.info["icc_profile"]
        assert written.info["exif"] == source.info["exif"]
        assert written.info["dpi"] == pytest.approx((300, 300), abs=0.01)
    result = load_rgb(out, LIMITS).pixels
    keep = outside(RECT, result.shape, 0)
    assert np.array_equal(result[keep], loaded.pixels[keep])
    y0, y1, x0, x1 = RECT
    assert (result[y0:y1, x0:x1] == RED).all()


def test_rgba_png_keeps_alpha(tmp_path: Path) -> None:
    path = tmp_path / "cutout.png"
    rgba = np.dstack([photo(), (np.arange(48 * 64) % 256).reshape(48, 64).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(path)
    loaded = load_rgb(path, LIMITS)
    assert "alpha channel ignored for analysis (kept in the output)" in loaded.notes
    out = tmp_path / "out.png"
    write_output(path, loaded, out, patches=painted(loaded.pixels))
    with Image.open(out) as written:
        assert written.mode == "RGBA"
        result = np.asarray(written)
    assert np.array_equal(result[..., 3], rgba[..., 3])
    keep = outside(RECT, rgba.shape, 0)
    assert np.array_equal(result[keep], rgba[keep])


def test_lossless_webp_keeps_untouched_pixels(tmp_path: Path) -> None:
    path = tmp_path / "web.webp"
    icc = srgb_icc()  # once: the profile's header carries a creation time
    Image.fromarray(photo()).save(path, lossless=True, icc_profile=icc)
    loaded = load_rgb(path, LIMITS)
    out = tmp_path / "out.webp"
    write_output(path, loaded, out, patches=painted(loaded.pixels))
    result = load_rgb(out, LIMITS).pixels
    assert np.array_equal(result, paint(loaded.pixels))
    with Image.open(out) as written:
        assert written.info["icc_profile"] == icc


def test_unchanged_output_is_a_byte_copy_with_times(tmp_path: Path) -> None:
    path = tmp_path / "same.jpg"
    Image.fromarray(photo()).save(path, exif=exif_with(6))
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_100_000_000_000_000_000))
    loaded = load_rgb(path, LIMITS)
    same = [Patch((3, 2, 20, 9), loaded.pixels[2:9, 3:20].copy()), Patch((0, 0, 0, 0),
                                                                      loaded.pixels[:0, :0])]
    for name, patches in (("none", None), ("empty", []), ("same", same)):
        out = tmp_path / "out" / f"same-{name}.jpg"
        source = path.stat()  # reading the original (load_rgb, a copy) may move its atime
        assert write_output(path, loaded, out, patches=patches) == []
        times = out.stat()  # before reading the output, for the same reason
        assert times.st_mtime_ns == 1_100_000_000_000_000_000
        assert times.st_atime_ns == source.st_atime_ns
        assert out.read_bytes() == path.read_bytes()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".openeyes-tmp-")]


@pytest.mark.parametrize(("box", "rows"), [((0, 0, 8, 8), 4), ((60, 40, 68, 48), 8)])
def test_patch_of_wrong_shape_or_outside_is_a_caller_bug(
    tmp_path: Path, box: tuple[int, int, int, int], rows: int
) -> None:
    path = tmp_path / "p.png"
    Image.fromarray(photo()).save(path)
    loaded = load_rgb(path, LIMITS)
    patch = Patch(box, np.zeros((rows, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="must be uint8"):
        write_output(path, loaded, tmp_path / "out.png", patches=[patch])
    assert not (tmp_path / "out.png").exists()


def test_awkward_file_name(tmp_path: Path) -> None:
    name = "Müller family 👪 shot\nno. 3.jpg"
    path = tmp_path / name
    Image.fromarray(photo()).save(path, "JPEG")
    loaded = load_rgb(path, LIMITS)
    assert loaded.info.path == path
    out = tmp_path / "out dir" / name
    write_output(path, loaded, out, patches=painted(loaded.pixels))
    assert load_rgb(out, LIMITS).pixels.shape == loaded.pixels.shape
    write_json(out.with_name(name + ".json"), {"source": path})
    assert json.loads(out.with_name(name + ".json").read_text())["source"] == str(path)


def test_write_json_is_atomic_sorted_and_unicode(tmp_path: Path) -> None:
    path = tmp_path / "side" / "car.json"
    write_json(path, {"z": 1, "name": "Zoë 👁", "score": np.float32(0.5), "bad": float("nan"),
                      "box": np.array([1, 2]), "where": Path("/x")})
    text = path.read_text(encoding="utf-8")
    assert "Zoë 👁" in text  # ensure_ascii=False
    assert text.index('"bad"') < text.index('"box"') < text.index('"z"')
    assert text.startswith('{\n  "bad": null')
    assert json.loads(text) == {"z": 1, "name": "Zoë 👁", "score": 0.5, "bad": None,
                                "box": [1, 2], "where": "/x"}
    assert os.listdir(path.parent) == ["car.json"]


@pytest.mark.parametrize(
    ("code", "kind"), [(errno.ENOSPC, "disk_full"), (errno.EROFS, "output_unwritable")]
)
def test_output_folder_problems_are_infrastructure_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, kind: str
) -> None:
    path = tmp_path / "p.png"
    Image.fromarray(photo()).save(path)
    loaded = load_rgb(path, LIMITS)

    def failing_write(target: Any, data: bytes) -> None:
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr(imageio, "atomic_write_bytes", failing_write)
    with pytest.raises(InfraError) as caught:
        write_output(path, loaded, tmp_path / "out.png", patches=painted(loaded.pixels))
    assert caught.value.kind == kind
    assert "requeued" in caught.value.message
