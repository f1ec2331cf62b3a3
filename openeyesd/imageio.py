"""Reading photos safely and writing fixed photos without losing anything of the original.

Three rules shape this module:

- **Refuse before decoding.** ``probe`` reads only the header: empty files, non-images, formats
  we do not handle, decompression bombs, oversized files and (by policy) animations are refused
  with a typed error whose message tells the operator what to do. Pillow's global
  ``MAX_IMAGE_PIXELS`` and ``LOAD_TRUNCATED_IMAGES`` are never changed: other threads share them.
- **Analyse upright 8-bit RGB.** ``load_rgb`` returns the picture as a viewer shows it (EXIF
  orientation applied) and says in ``notes`` every conversion it made on the way.
- **Write back only what changed.** ``write_output`` takes the change as ``Patch``es (upright
  boxes and their new pixels), puts the pixels that differ from the loaded photo into the
  original's own pixel format (16-bit stays 16-bit, CMYK stays CMYK, alpha and palette are
  kept), in the original's stored orientation, and carries the original's metadata over byte
  for byte: JPEG APPn/COM segments and PNG ancillary chunks are spliced from the original into
  the new file; JPEG is re-encoded with the original's quantization tables and subsampling so
  untouched areas barely move. All the comparing and merging happens inside the patch boxes:
  a 24 MP photo is never compared, converted or copied as a whole on the way out.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pwd
import re
import shutil
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError
from PIL.Image import Transpose

from openeyesd.config import AnimatedPolicy, LimitsConfig
from openeyesd.errors import (
    AnimatedImage,
    CorruptImage,
    DiskFull,
    EmptyFile,
    FileTooLarge,
    NotAnImage,
    OutOfMemory,
    OutputUnwritable,
    SourceBusy,
    SourceMissing,
    SourcePermissionDenied,
    TooManyPixels,
    UnsupportedFormat,
)
from openeyesd.files import atomic_open, atomic_write_bytes

#: The formats openeyes reads and writes. Pillow calls multi-picture JPEGs "MPO".
FORMATS: tuple[str, ...] = ("JPEG", "PNG", "TIFF", "WEBP", "GIF", "BMP")
_PILLOW_FORMATS: tuple[str, ...] = FORMATS  # the JPEG plugin opens MPO files itself
#: Pillow modes we can turn into RGB for analysis and write back into.
_MODES = frozenset(
    {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I"}
    | {"I;16", "I;16B", "I;16L", "I;16N"}
)
_RAW_SUFFIXES = frozenset(
    {".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf"}
    | {".pef", ".srw", ".3fr", ".iiq", ".erf", ".kdc", ".mos", ".mrw", ".x3f"}
)
#: Signatures of image formats Pillow may not know, so we can say "unsupported", not "not an
#: image": (offset, bytes, name).
_OTHER_IMAGE_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypcrx ", "Canon CR3 RAW"),
    (0, b"\xff\x0a", "JPEG XL"),
    (0, b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (0, b"8BPS", "Photoshop PSD"),
    (0, b"FUJIFILMCCD-RAW", "Fujifilm RAF RAW"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
)
_TO_UPRIGHT: dict[int, Transpose] = {
    2: Transpose.FLIP_LEFT_RIGHT,
    3: Transpose.ROTATE_180,
    4: Transpose.FLIP_TOP_BOTTOM,
    5: Transpose.TRANSPOSE,
    6: Transpose.ROTATE_270,
    7: Transpose.TRANSVERSE,
    8: Transpose.ROTATE_90,
}
_INVERSE: dict[Transpose, Transpose] = {
    Transpose.ROTATE_90: Transpose.ROTATE_270,
    Transpose.ROTATE_270: Transpose.ROTATE_90,
}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG chunks that describe the pixel encoding: taken from the new encoding, never the original.
_PNG_STRUCTURAL = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"})
#: APNG animation chunks: dropped with the animation.
_PNG_ANIMATION = frozenset({b"acTL", b"fcTL", b"fdAT"})
#: TIFF tags that describe the strip layout and encoding: Pillow writes its own.
_TIFF_STRUCTURAL = frozenset(
    {256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325, 338, 339}
    | {330, 347, 530, 531, 532, 34665, 34853, 34675, 274}
)


@dataclass(frozen=True)
class ImageInfo:
    """What ``probe`` learns from the header, without decoding pixels."""

    path: Path
    #: One of FORMATS (a multi-picture "MPO" JPEG is reported as "JPEG").
    format: str
    #: As stored in the file, before EXIF orientation.
    width: int
    height: int
    #: Pillow mode of the first frame ("RGB", "CMYK", "I;16", "P", ...).
    mode: str
    #: Bits per sample: 1, 8 or 16 (32 for 32-bit integer TIFF).
    bits: int
    n_frames: int
    #: More than one frame that is part of an animation (or pages of a TIFF). An MPO's second
    #: picture (a depth map, a 3D view) is not an animation.
    is_animated: bool
    #: EXIF orientation 1..8; 1 when absent or invalid.
    orientation: int
    exif: bytes | None
    icc_profile: bytes | None
    #: JPEG only: quantization tables in Pillow's order (natural order, 64 values each), the
    #: chroma subsampling (0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0; None for grayscale/CMYK/unusual)
    #: and whether the file is progressive.
    jpeg_qtables: tuple[tuple[int, ...], ...] | None
    jpeg_subsampling: int | None
    jpeg_progressive: bool
    file_size: int
    dpi: tuple[float, float] | None = None
    #: Anything odd seen in the header (invalid orientation, extra MPO pictures, ...).
    notes: tuple[str, ...] = ()

    @property
    def upright_width(self) -> int:
        return self.height if self.orientation in (5, 6, 7, 8) else self.width

    @property
    def upright_height(self) -> int:
        return self.width if self.orientation in (5, 6, 7, 8) else self.height

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass
class LoadedImage:
    info: ImageInfo
    #: Upright uint8 RGB, shape (upright_height, upright_width, 3). Read-only: stages share
    #: this one decoded frame (``ctx.memo``) and it is the reference ``write_output`` compares
    #: patches against, so nobody may write into it.
    pixels: np.ndarray
    #: Human-readable notes on every conversion made, for the sidecar and the ledger.
    notes: list[str] = field(default_factory=list)


#: (x0, y0, x1, y1) in pixels, x1/y1 exclusive.
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Patch:
    """New pixels for one box of the upright photo: uint8 RGB shaped (y1-y0, x1-x0, 3).
    Pixels equal to the loaded photo's count as unchanged; later patches win where boxes
    overlap."""

    box: Box
    pixels: np.ndarray


# --- errors from the file system -------------------------------------------------------------


def _daemon_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


@contextlib.contextmanager
def _source_errors(path: Path) -> Iterator[None]:
    """Translate OS errors while reading the original into typed, operator-facing errors."""
    try:
        yield
    except FileNotFoundError:
        raise SourceMissing(
            f"{path}: the file disappeared before it could be read (moved, renamed or deleted "
            "while queued); if it was renamed the new name is picked up on the next scan"
        ) from None
    except PermissionError:
        raise SourcePermissionDenied(
            f"{path}: permission denied reading the file as user {_daemon_user()}; fix the "
            "file's permissions (e.g. chmod a+r, or add the user to the share's group) and "
            "run `openeyesctl retry ID` with this job's ID"
        ) from None
    except IsADirectoryError:
        raise NotAnImage(f"{path}: is a directory, not an image file") from None
    except OSError as exc:
        if exc.errno is None:  # Pillow's own format errors carry no errno: not ours to handle.
            raise
        # EIO, EBUSY, ESTALE on NAS shares and the like: the file may well read fine later.
        raise SourceBusy(
            f"{path}: could not be read ({os.strerror(exc.errno)}); it will be retried "
            "automatically. If this persists, check the disk or network share."
        ) from None


def _file_size(path: Path, limits: LimitsConfig) -> int:
    with _source_errors(path):
        size = os.stat(path).st_size
    if size == 0:
        raise EmptyFile(
            f"{path}: the file is empty (0 bytes), probably an interrupted upload or copy; "
            "copy the photo again"
        )
    limit = int(limits.max_file_mb * 1024 * 1024)
    if size > limit:
        raise FileTooLarge(
            f"{path}: the file is {size / 1048576:.1f} MB, above limits.max_file_mb = "
            f"{limits.max_file_mb:g}; raise limits.max_file_mb in config.toml if this is "
            "intended",
        )
    return size


# --- probe -----------------------------------------------------------------------------------


def probe(path: Path, limits: LimitsConfig) -> ImageInfo:
    """Identify ``path`` from its header and check it against ``limits``; decode nothing."""
    with _opened(Path(path), limits) as (_image, info):
        return info


@contextlib.contextmanager
def _opened(path: Path, limits: LimitsConfig) -> Iterator[tuple[Image.Image, ImageInfo]]:
    size = _file_size(path, limits)
    with _source_errors(path):
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
    with handle:
        image = _identify(path, handle)
        with image:
            info = _describe(path, image, size, limits)
            yield image, info


def _identify(path: Path, handle: BinaryIO) -> Image.Image:
    try:
        with _source_errors(path):
            return Image.open(handle, formats=_PILLOW_FORMATS)
    except UnidentifiedImageError:
        raise _unidentified(path, handle) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _pillow_bomb(path, exc) from None
    except MemoryError:
        raise OutOfMemory(f"{path}: out of memory while reading the image header") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure in a header: damaged file
        raise CorruptImage(
            f"{path}: the image header is damaged ({type(exc).__name__}: {exc}); re-export or "
            "copy the photo again, then run `openeyesctl retry ID`"
        ) from None


def _pillow_bomb(path: Path, exc: Exception) -> TooManyPixels:
    """Pillow refuses above 2 * MAX_IMAGE_PIXELS by itself, before we see the size (and warns
    above MAX_IMAGE_PIXELS, which a warnings filter may turn into an exception). We do not
    raise Pillow's global: other threads share it."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else "the image"
    limit = Image.MAX_IMAGE_PIXELS or 0
    if isinstance(exc, Image.DecompressionBombError):
        limit *= 2
    return TooManyPixels(
        f"{path}: {size} is above the decompression-bomb limit of {limit:,} pixels built into "
        "the image library, so it is refused whatever limits.max_pixels says; downscale or "
        "split the image if it is genuine"
    )


def _unidentified(path: Path, handle: BinaryIO) -> Exception:
    """Tell an image format we do not handle from something that is not an image at all."""
    with _source_errors(path):
        handle.seek(0)
        head = handle.read(32)
    for offset, magic, name in _OTHER_IMAGE_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return _unsupported(path, name)
    try:
        handle.seek(0)
        with Image.open(handle) as other:  # all Pillow plugins, only to name the format
            return _unsupported(path, other.format or "unknown")
    except Exception:  # noqa: BLE001 - whatever went wrong, it is not an image we can name
        pass
    return NotAnImage(
        f"{path}: not an image (the file starts with {head[:16]!r}); it may be a document, a "
        "sidecar or a partially uploaded file. Remove it from the watched folder."
    )


def _unsupported(path: Path, name: str) -> UnsupportedFormat:
    return UnsupportedFormat(
        f"{path}: {name} images are not supported (openeyes handles {', '.join(FORMATS)}); "
        "export the photo as JPEG or TIFF and drop it in again"
    )


def _describe(path: Path, image: Image.Image, size: int, limits: LimitsConfig) -> ImageInfo:
    fmt = "JPEG" if image.format == "MPO" else str(image.format)
    notes: list[str] = []
    _refuse_unsupported(path, image, fmt)
    width, height = _stored_size(image)
    if width * height > limits.max_pixels:
        raise TooManyPixels(
            f"{path}: {width}×{height} = {width * height:,} pixels is above limits.max_pixels "
            f"= {limits.max_pixels:,} (decompression-bomb guard); raise limits.max_pixels in "
            "config.toml if this is intended"
        )
    n_frames = int(getattr(image, "n_frames", 1))
    is_animated = n_frames > 1 and image.format != "MPO"
    if image.format == "MPO" and n_frames > 1:
        notes.append(f"multi-picture JPEG: used the primary picture of {n_frames}")
    if is_animated and limits.animated is AnimatedPolicy.REFUSE:
        what = "pages" if fmt == "TIFF" else "frames"
        raise AnimatedImage(
            f"{path}: animated {fmt} with {n_frames} {what}, and limits.animated = 'refuse'; "
            "set limits.animated = 'first_frame' in config.toml to fix the first frame only, "
            "or export a single still photo"
        )
    exif = _exif_bytes(image, notes)
    return ImageInfo(
        path=path,
        format=fmt,
        width=width,
        height=height,
        mode=image.mode,
        bits=_bits_per_sample(image),
        n_frames=n_frames,
        is_animated=is_animated,
        orientation=_orientation(image, exif, notes),
        exif=exif,
        icc_profile=image.info.get("icc_profile") or None,
        jpeg_qtables=_qtables(image),
        jpeg_subsampling=_subsampling(image),
        jpeg_progressive=bool(image.info.get("progressive") or image.info.get("progression")),
        file_size=size,
        dpi=_dpi(image),
        notes=tuple(notes),
    )


def _refuse_unsupported(path: Path, image: Image.Image, fmt: str) -> None:
    if fmt not in FORMATS:
        raise _unsupported(path, fmt)
    tags = getattr(image, "tag_v2", {})
    # Camera RAW files are TIFF inside; Pillow would show only their embedded preview.
    if fmt == "TIFF" and (path.suffix.lower() in _RAW_SUFFIXES or 50706 in tags):
        raise _unsupported(path, f"camera RAW ({path.suffix or 'DNG'})")
    if image.mode not in _MODES:
        raise UnsupportedFormat(
            f"{path}: {fmt} with pixel mode {image.mode} is not supported (e.g. floating-point "
            "or Lab TIFF); export the photo as 8- or 16-bit RGB"
        )


def _stored_size(image: Image.Image) -> tuple[int, int]:
    tags = getattr(image, "tag_v2", None)
    if image.format == "TIFF" and tags is not None:
        # Pillow reports a TIFF's size already rotated by its orientation tag.
        return int(tags.get(256, image.width)), int(tags.get(257, image.height))
    return image.size


def _bits_per_sample(image: Image.Image) -> int:
    if image.mode == "1":
        return 1
    if image.mode.startswith("I;16"):
        return 16
    tags = getattr(image, "tag_v2", None)
    if image.format == "TIFF" and tags is not None and 258 in tags:
        bits = tags[258]
        return int(bits[0] if isinstance(bits, tuple) else bits)
    args = image.tile[0].args if image.tile else None
    rawmode = args if isinstance(args, str) else (args[0] if args else "")  # PNG: a bare str
    if isinstance(rawmode, str) and ";16" in rawmode:
        return 16  # e.g. a 16-bit RGB PNG, which Pillow decodes to 8-bit RGB
    return 32 if image.mode == "I" else 8


def _exif_bytes(image: Image.Image, notes: list[str]) -> bytes | None:
    raw = image.info.get("exif")
    if isinstance(raw, bytes) and raw:
        return raw
    if image.format == "TIFF":
        try:  # EXIF lives in the TIFF's own tags; getexif() reads them without decoding
            data = image.getexif().tobytes()
        except Exception as exc:  # noqa: BLE001 - unreadable metadata must not fail the photo
            notes.append(f"EXIF could not be read ({exc}); ignored")
            return None
        return data or None
    return None


def _orientation(image: Image.Image, exif: bytes | None, notes: list[str]) -> int:
    tags = getattr(image, "tag_v2", None)
    value: Any = None
    if image.format == "TIFF" and tags is not None:
        value = tags.get(274)
    elif exif:
        try:
            parsed = Image.Exif()
            parsed.load(exif)
            value = parsed.get(274)
        except Exception as exc:  # noqa: BLE001 - a broken EXIF block must not fail the photo
            notes.append(f"EXIF could not be parsed ({exc}); orientation assumed upright")
            return 1
    if value is None:
        return 1
    if not isinstance(value, int) or not 1 <= value <= 8:
        notes.append(f"EXIF orientation {value!r} is invalid; treated as upright (1)")
        return 1
    return value


def _qtables(image: Image.Image) -> tuple[tuple[int, ...], ...] | None:
    tables = getattr(image, "quantization", None)
    if not tables:
        return None
    return tuple(tuple(int(v) for v in tables[key]) for key in sorted(tables))


def _subsampling(image: Image.Image) -> int | None:
    if not isinstance(image, JpegImagePlugin.JpegImageFile):
        return None
    sampling = JpegImagePlugin.get_sampling(image)
    return None if sampling < 0 else sampling


def _dpi(image: Image.Image) -> tuple[float, float] | None:
    dpi = image.info.get("dpi")
    if isinstance(dpi, tuple) and len(dpi) == 2:
        return float(dpi[0]), float(dpi[1])
    return None


# --- load ------------------------------------------------------------------------------------


def load_rgb(path: Path, limits: LimitsConfig) -> LoadedImage:
    """Decode the first frame into an upright uint8 RGB array; ``notes`` say what was done."""
    path = Path(path)
    with _opened(path, limits) as (image, info):
        notes = list(info.notes)
        if info.is_animated:
            kind = "pages" if info.format == "TIFF" else "frames"
            notes.append(f"animated {info.format}: used frame 1 of {info.n_frames} ({kind})")
        native, already_upright = _decode(path, image, info)
        rgb = _to_rgb8(native, info, notes)
    if info.orientation != 1:
        if not already_upright:
            rgb = transpose_array(rgb, _TO_UPRIGHT[info.orientation])
        notes.append(f"EXIF orientation {info.orientation} applied")
    pixels = np.ascontiguousarray(rgb)
    pixels.flags.writeable = False
    return LoadedImage(info=info, pixels=pixels, notes=notes)


def load_rgb_regions(
    path: Path, limits: LimitsConfig, boxes: Sequence[Box]
) -> tuple[ImageInfo, list[tuple[Box, np.ndarray]]]:
    """Decode the first frame once and return only the given upright boxes (clamped to the
    photo) as uint8 RGB, each with its clamped box: the pixels are those ``load_rgb`` gives
    in that box, without converting or holding the whole frame as an array (a donor frame
    lends a face or two, not 72 MB)."""
    path = Path(path)
    notes: list[str] = []
    regions = []
    with _opened(path, limits) as (image, info):
        native, already_upright = _decode(path, image, info)
        orientation = 1 if already_upright else info.orientation
        method = _TO_UPRIGHT.get(orientation)
        for box in boxes:
            x0, y0, x1, y1 = box
            clamped = (max(x0, 0), max(y0, 0), min(max(x1, 0), info.upright_width),
                       min(max(y1, 0), info.upright_height))
            if clamped[0] >= clamped[2] or clamped[1] >= clamped[3]:
                raise ValueError(f"box {box} lies outside the {info.upright_width}×"
                                 f"{info.upright_height} photo {path}")
            crop = native.crop(stored_box(clamped, orientation, native.size))
            rgb = _to_rgb8(crop, info, notes)
            if method is not None:
                rgb = transpose_array(rgb, method)
            pixels = np.ascontiguousarray(rgb)
            pixels.flags.writeable = False
            regions.append((clamped, pixels))
    return info, regions


def _decode(path: Path, image: Image.Image, info: ImageInfo) -> tuple[Image.Image, bool]:
    """Decode frame 1 in its native mode. Returns the image and whether Pillow already turned
    it upright (it does so for TIFF, and then drops the orientation tag)."""
    try:
        with _source_errors(path):
            image.load()
    except MemoryError:
        raise OutOfMemory(
            f"{path}: out of memory decoding {info.width}×{info.height} pixels; lower "
            "worker.concurrency or limits.max_pixels in config.toml"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated data, bad Huffman codes, zlib errors
        raise CorruptImage(
            f"{path}: the image data is truncated or damaged ({exc}); the original was not "
            "changed. Copy or export the photo again, then run `openeyesctl retry ID`"
        ) from None
    tags = getattr(image, "tag_v2", None)
    upright = info.format == "TIFF" and info.orientation != 1 and 274 not in (tags or {})
    return image, upright


def _to_rgb8(native: Image.Image, info: ImageInfo, notes: list[str]) -> np.ndarray:
    mode = native.mode
    if mode.startswith("I"):
        notes.append(f"{info.bits}-bit {info.format} reduced to 8-bit for analysis")
        gray = _scale_to_8bit(np.asarray(native), info.bits)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "RGB":
        if info.bits == 16:
            notes.append(f"16-bit {info.format} reduced to 8-bit for analysis")
        return _array_of(native)
    if mode == "CMYK":
        notes.append(f"CMYK {info.format} converted to RGB for analysis (output stays CMYK)")
    elif mode in ("RGBA", "LA", "PA"):
        notes.append("alpha channel ignored for analysis (kept in the output)")
    elif mode in ("P", "1"):
        notes.append(f"{'palette' if mode == 'P' else '1-bit'} image converted to RGB for analysis")
    if mode in ("P", "PA"):
        # Through RGBA, so a palette with transparency converts without Pillow's warning.
        return _array_of(native.convert("RGBA"))[:, :, :3]
    return _array_of(native.convert("RGB"))


def _array_of(image: Image.Image, band_bytes: int = 4 << 20) -> np.ndarray:
    """``np.asarray(image)`` without its transient: Pillow's array interface builds the frame
    as a list of 64 KiB chunks joined into one bytes object, two extra copies of the frame at
    its peak (and slower). Here Pillow's raw encoder (what ``tobytes`` uses) copies one band
    at a time into a single writable array: the peak is the image plus the array."""
    width, height = image.size
    first = np.asarray(image.crop((0, 0, width, min(height, 1))))  # dtype and channels
    out = np.empty((height, *first.shape[1:]), first.dtype)
    rawmode = "L" if image.mode == "1" else image.mode  # as the array interface does
    rows = max(1, band_bytes // max(first.nbytes, 1))
    for top in range(0, height, rows):
        band = out[top:min(top + rows, height)]
        encoder = Image._getencoder(image.mode, "raw", rawmode)
        try:
            encoder.setimage(image.im, (0, top, width, top + band.shape[0]))
            flat, done, status = band.reshape(-1).view(np.uint8), 0, 0
            while status == 0:
                _, status, data = encoder.encode(flat.nbytes - done + 65536)
                flat[done:done + len(data)] = np.frombuffer(data, np.uint8)
                done += len(data)
        finally:
            encoder.cleanup()
        if status < 0 or done != flat.nbytes:
            raise RuntimeError(f"raw encoder error {status} copying {image.mode} pixels")
    return out


def _scale_to_8bit(values: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << min(bits, 31)) - 1
    wide = np.clip(values.astype(np.int64), 0, top)
    # Round to nearest, so that a value written back as v8 * 257 reads again as v8.
    return ((wide * 255 + top // 2) // top).astype(np.uint8)


def transpose_array(array: np.ndarray, method: Transpose) -> np.ndarray:
    """``Image.transpose`` for numpy arrays of shape (H, W) or (H, W, C)."""
    if method is Transpose.FLIP_LEFT_RIGHT:
        result = array[:, ::-1]
    elif method is Transpose.FLIP_TOP_BOTTOM:
        result = array[::-1]
    elif method is Transpose.ROTATE_180:
        result = array[::-1, ::-1]
    elif method is Transpose.ROTATE_90:
        result = np.rot90(array, 1)
    elif method is Transpose.ROTATE_270:
        result = np.rot90(array, -1)
    elif method is Transpose.TRANSPOSE:
        result = array.swapaxes(0, 1)
    else:  # TRANSVERSE
        result = np.rot90(array, 2).swapaxes(0, 1)
    return np.ascontiguousarray(result)


def inverse_transpose(method: Transpose) -> Transpose:
    return _INVERSE.get(method, method)


# --- write -----------------------------------------------------------------------------------


def write_output(
    original: Path, loaded: LoadedImage, out_path: Path, *,
    patches: Sequence[Patch] | None = None,
) -> list[str]:
    """Write the fixed photo to ``out_path`` atomically, in the original's format, mode,
    orientation and metadata; copy the original's atime/mtime onto it.

    ``patches`` are upright crops of the fixed photo (see ``Patch``), pasted over
    ``loaded.pixels`` in order; None, or patches that change no pixel, mean nothing changed,
    and the original is copied byte for byte. Returns notes on anything the output could not
    keep (animation frames, MPO pictures, TIFF metadata of 16-bit RGB files).
    """
    original, out_path = Path(original), Path(out_path)
    with _source_errors(original):
        stat = os.stat(original)
    notes: list[str] = []
    changes = _changes(loaded, patches or ())
    if not changes:
        _copy_original(original, out_path)
    else:
        data = _encode(original, loaded, changes, notes)
        with _output_errors(out_path):
            atomic_write_bytes(out_path, data)
    with _output_errors(out_path):
        # After the replace, not atomic with it: a crash in between leaves a correct photo
        # with the wrong mtime, which is acceptable.
        os.utime(out_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return notes


@dataclass(frozen=True)
class _Change:
    """The changed pixels of one patch (or of overlapping patches merged), upright."""

    box: Box
    #: New uint8 RGB pixels of the box.
    pixels: np.ndarray
    #: Which pixels of the box differ from the loaded photo.
    mask: np.ndarray


def _changes(loaded: LoadedImage, patches: Sequence[Patch]) -> list[_Change]:
    """Compare each patch with the loaded photo inside its box only. Overlapping patches are
    merged first (later wins), so each pixel is written once, from the patch that has it
    last."""
    for patch in patches:
        _check_patch(loaded, patch)
    changes = []
    for group in _overlapping(patches):
        box = _union_box([p.box for p in group])
        x0, y0, x1, y1 = box
        pixels = group[0].pixels
        if len(group) > 1:
            pixels = loaded.pixels[y0:y1, x0:x1].copy()
            for patch in group:
                px0, py0, px1, py1 = patch.box
                pixels[py0 - y0:py1 - y0, px0 - x0:px1 - x0] = patch.pixels
        mask = np.any(pixels != loaded.pixels[y0:y1, x0:x1], axis=2)
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            continue
        # Trimmed to the changed pixels: everything after this works on that box only.
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        changes.append(_Change(
            (x0 + int(left), y0 + int(top), x0 + int(right), y0 + int(bottom)),
            pixels[top:bottom, left:right], mask[top:bottom, left:right]))
    return changes


def _check_patch(loaded: LoadedImage, patch: Patch) -> None:
    height, width = loaded.pixels.shape[:2]
    x0, y0, x1, y1 = patch.box
    shape = (y1 - y0, x1 - x0, 3)
    if not (0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height) or (
        patch.pixels.shape != shape or patch.pixels.dtype != np.uint8
    ):
        # A bug in the caller, not bad input: fail loudly.
        raise ValueError(
            f"a patch for box {patch.box} of a {width}×{height} photo must be uint8 {shape} "
            f"inside the photo, got {patch.pixels.dtype} {patch.pixels.shape}"
        )


def _overlapping(patches: Sequence[Patch]) -> list[list[Patch]]:
    """The non-empty patches grouped so that boxes of different groups do not overlap; each
    group keeps the patches' order."""
    groups: list[list[int]] = []
    for index, patch in enumerate(patches):
        x0, y0, x1, y1 = patch.box
        if x1 <= x0 or y1 <= y0:
            continue
        hit = [g for g in groups if any(_overlap(patch.box, patches[i].box) for i in g)]
        groups = [g for g in groups if all(g is not h for h in hit)]
        groups.append(sorted([i for g in hit for i in g] + [index]))
    return [[patches[i] for i in group] for group in groups]


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _union_box(boxes: Sequence[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))


def stored_box(box: Box, orientation: int, stored_size: tuple[int, int]) -> Box:
    """Where the upright ``box`` lies in the pixels as stored under EXIF ``orientation``
    (``stored_size`` = stored width, height). The stored crop of that box, turned upright with
    the same transpose as the whole photo, is the upright crop."""
    method = _TO_UPRIGHT.get(orientation)
    if method is None:
        return box
    x0, y0, x1, y1 = box
    corners = [_stored_point(method, x, y, stored_size) for x, y in ((x0, y0), (x1 - 1, y1 - 1))]
    (ax, ay), (bx, by) = corners
    return min(ax, bx), min(ay, by), max(ax, bx) + 1, max(ay, by) + 1


def _stored_point(method: Transpose, x: int, y: int, size: tuple[int, int]) -> tuple[int, int]:
    """The stored (x, y) of upright pixel (x, y), where upright = ``transpose_array(stored,
    method)``; ``size`` is the stored width and height."""
    width, height = size
    column, row = {
        Transpose.FLIP_LEFT_RIGHT: (width - 1 - x, y),
        Transpose.FLIP_TOP_BOTTOM: (x, height - 1 - y),
        Transpose.ROTATE_180: (width - 1 - x, height - 1 - y),
        Transpose.ROTATE_90: (width - 1 - y, x),
        Transpose.ROTATE_270: (y, height - 1 - x),
        Transpose.TRANSPOSE: (y, x),
        Transpose.TRANSVERSE: (width - 1 - y, height - 1 - x),
    }[method]
    return column, row


def _to_stored(change: _Change, orientation: int, stored_size: tuple[int, int]) -> _Change:
    """The change in stored coordinates: its box mapped, its crops turned back."""
    method = _TO_UPRIGHT.get(orientation)
    if method is None:
        return change
    back = inverse_transpose(method)
    return _Change(stored_box(change.box, orientation, stored_size),
                   transpose_array(change.pixels, back), transpose_array(change.mask, back))


def _copy_original(original: Path, out_path: Path) -> None:
    # Opened first and on its own, so a read problem is reported as the source's and a write
    # problem as the output folder's.
    with _source_errors(original):
        source = open(original, "rb")  # noqa: SIM115 - closed by the with below
    with source, _output_errors(out_path), atomic_open(out_path) as target:
        shutil.copyfileobj(source, target, 1024 * 1024)


@contextlib.contextmanager
def _output_errors(out_path: Path) -> Iterator[None]:
    """A full or unwritable output folder is the machine's fault, not the photo's."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(
                f"{out_path}: no space left in the output folder; free some space there, "
                "the job is requeued"
            ) from None
        raise OutputUnwritable(
            f"{out_path}: cannot write the output ({exc.strerror or exc}) as user "
            f"{_daemon_user()}; check the output folder's permissions and free space, "
            "the job is requeued",
        ) from None


def _encode(
    original: Path, loaded: LoadedImage, changes: list[_Change], notes: list[str]
) -> bytes:
    info = loaded.info
    with _source_errors(original):
        source = original.read_bytes()
    if info.bits == 16 and info.mode in ("RGB", "RGBA"):
        # Pillow decodes 16-bit colour to 8-bit; OpenCV keeps all 16 bits.
        return _encode_rgb16(source, info, changes, notes)
    limits = LimitsConfig(max_pixels=max(info.pixels, 1), max_file_mb=len(source) / 2**20 + 1)
    with _opened(original, limits) as (image, again):
        if (again.format, again.width, again.height, again.mode) != (
            info.format,
            info.width,
            info.height,
            info.mode,
        ):
            raise SourceBusy(f"{original}: the file changed after it was analysed; retrying")
        native, already_upright = _decode(original, image, info)
        tags = dict(getattr(image, "tag_v2", {}))
        # Pasted where the pixels are: in stored orientation, unless Pillow already turned
        # this TIFF upright, in which case the whole frame must be turned back afterwards.
        orientation = 1 if already_upright else info.orientation
        for change in changes:
            _paste(native, _to_stored(change, orientation, native.size), info, notes)
        method = _TO_UPRIGHT.get(info.orientation)
        if already_upright and method is not None:
            stored = native.transpose(inverse_transpose(method))
        else:
            # A plain Image over the same pixel memory (no copy), as the merge used to hand
            # over: the file plugin's own object would carry its reader state (TIFF's legacy
            # IFD) into the writers.
            stored = native._new(native.im)
    if info.is_animated or info.n_frames > 1:
        notes.append(_dropped_frames_note(info))
    data = _save(stored, source, info, tags, notes)
    _verify(original, data, stored.size)
    return data


def _dropped_frames_note(info: ImageInfo) -> str:
    if not info.is_animated:
        return f"multi-picture JPEG: only the primary picture of {info.n_frames} was written"
    what = "pages" if info.format == "TIFF" else "frames"
    return f"animated {info.format}: only the fixed frame 1 of {info.n_frames} {what} was written"


def _verify(original: Path, data: bytes, size: tuple[int, int]) -> None:
    """Decode what we are about to write: a broken output must never replace anything."""
    try:
        with Image.open(BytesIO(data)) as check:
            decoded_size = check.size
            if check.format == "JPEG":
                # Every entropy-coded block is still read at 1/8 scale, so truncation and
                # corruption are caught, at a fraction of a full decode's time and memory.
                check.draft(check.mode, (max(decoded_size[0] // 8, 1),
                                         max(decoded_size[1] // 8, 1)))
            check.load()
            problem = (
                None
                if size in (decoded_size, decoded_size[::-1])
                else (f"decoded size {decoded_size}, expected {size}")
            )
    except Exception as exc:  # noqa: BLE001 - reported below with the reason
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        raise CorruptImage(f"{original}: the re-encoded output failed its check ({problem})")


def _paste(frame: Image.Image, change: _Change, info: ImageInfo, notes: list[str]) -> None:
    """Write the changed pixels into ``frame`` (the decoded original, its own mode) inside
    the change's box only; pixels of the box outside the mask keep their stored values."""
    crop = frame.crop(change.box)
    frame.paste(_merge(crop, change.pixels, change.mask, info, notes), change.box)


def _merge(
    upright: Image.Image, fixed: np.ndarray, mask: np.ndarray, info: ImageInfo, notes: list[str]
) -> Image.Image:
    """Write the changed pixels of ``fixed`` into ``upright`` (a crop) in its own mode."""
    mode = upright.mode
    array = np.array(upright)
    target = array[..., 0] if mode in ("LA", "PA") else array
    if mode in ("RGB", "RGBA", "RGBX"):
        array[..., :3][mask] = fixed[mask]
    elif mode in ("L", "LA"):
        target[mask] = _luma(fixed)[mask]
    elif mode == "1":
        array[mask] = _luma(fixed)[mask] >= 128
    elif mode.startswith("I"):
        top = (1 << min(info.bits, 31)) - 1
        wide = _luma(fixed)[mask].astype(np.int64)
        array[mask] = ((wide * top + 127) // 255).astype(array.dtype)
    elif mode == "CMYK":
        array[mask] = _rgb_to_cmyk(fixed[mask])
    elif mode == "YCbCr":
        array[mask] = np.asarray(Image.fromarray(fixed).convert("YCbCr"))[mask]
    else:  # P, PA: map to the nearest colour of the existing palette, so the palette stays
        target[mask] = _nearest_palette(upright, fixed[mask])
        note = "palette image: changed pixels mapped to the nearest palette colour"
        if note not in notes:
            notes.append(note)
    merged = upright.copy()
    raw = np.packbits(array, axis=1) if mode == "1" else array
    merged.frombytes(np.ascontiguousarray(raw).tobytes())
    return merged


def _luma(rgb: np.ndarray) -> np.ndarray:
    # Pillow's own RGB -> L weights, so a gray output matches how Pillow shows it as RGB.
    return np.asarray(Image.fromarray(rgb).convert("L"))


def _rgb_to_cmyk(rgb: np.ndarray) -> np.ndarray:
    """Inverse of Pillow's CMYK -> RGB (R = (255-C)(255-K)/255) with full grey-component
    replacement: darkness goes to K, as real separations do, rather than to a CMY mix."""
    wide = rgb.astype(np.int64)
    top = wide.max(axis=-1, keepdims=True)
    safe = np.maximum(top, 1)
    cmy = 255 - (wide * 255 + safe // 2) // safe
    cmy = np.where(top == 0, 0, cmy)
    return np.concatenate([cmy, 255 - top], axis=-1).astype(np.uint8)


def _nearest_palette(image: Image.Image, colors: np.ndarray) -> np.ndarray:
    palette = np.array(image.getpalette("RGB") or [0, 0, 0], dtype=np.int32).reshape(-1, 3)
    usable = np.ones(len(palette), dtype=bool)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int) and transparent < len(palette) and len(palette) > 1:
        usable[transparent] = False  # a fixed eye must not become a hole
    candidates = np.flatnonzero(usable)
    result = np.empty(len(colors), dtype=np.uint8)
    for start in range(0, len(colors), 65536):  # bounded memory for large masks
        chunk = colors[start : start + 65536].astype(np.int32)
        distance = ((chunk[:, None, :] - palette[candidates][None, :, :]) ** 2).sum(axis=2)
        result[start : start + 65536] = candidates[distance.argmin(axis=1)]
    return result


def _save(
    stored: Image.Image, source: bytes, info: ImageInfo, tags: dict[int, Any], notes: list[str]
) -> bytes:
    buffer = BytesIO()
    metadata: dict[str, Any] = {"exif": info.exif or b"", "icc_profile": info.icc_profile}
    if info.format == "JPEG":
        stored.save(buffer, "JPEG", **metadata, **_jpeg_options(stored, info, notes))
        return _splice_jpeg(source, buffer.getvalue(), notes)
    if info.format == "PNG":
        stored.save(buffer, "PNG")
        return _splice_png(source, buffer.getvalue(), notes)
    if info.format == "TIFF":
        stored.save(buffer, "TIFF", **_tiff_options(stored, info, tags))
        if 34665 in tags or 34853 in tags:
            # Pillow's libtiff writer cannot write these sub-directories back.
            notes.append("TIFF: EXIF/GPS sub-directories (capture settings) were not kept")
    elif info.format == "WEBP":
        lossless = _webp_is_lossless(source)
        if not lossless:
            notes.append("lossy WebP re-encoded at quality 95")
        options = {"lossless": True, "exact": True} if lossless else {"quality": 95}
        xmp = stored.info.get("xmp") or b""
        stored.save(buffer, "WEBP", **metadata, xmp=xmp, **options)
    elif info.format == "GIF":
        stored.save(buffer, "GIF")
    else:
        stored.save(buffer, "BMP")
    return buffer.getvalue()


def _jpeg_options(stored: Image.Image, info: ImageInfo, notes: list[str]) -> dict[str, Any]:
    # quality="keep" only works on the opened JpegImageFile; pass the tables explicitly so
    # untouched blocks are quantized exactly as before.
    options: dict[str, Any] = {"progressive": info.jpeg_progressive}
    if info.jpeg_qtables:
        options["qtables"] = [list(table) for table in info.jpeg_qtables]
    else:
        options["quality"] = 95
        notes.append("original JPEG quantization tables unavailable; re-encoded at quality 95")
    if info.jpeg_subsampling is not None:
        options["subsampling"] = info.jpeg_subsampling
    if stored.mode == "RGB" and stored.info.get("adobe_transform") == 0:
        options["keep_rgb"] = True  # the original stores RGB, not YCbCr
    return options


def _tiff_options(stored: Image.Image, info: ImageInfo, tags: dict[int, Any]) -> dict[str, Any]:
    tiffinfo = {tag: value for tag, value in tags.items() if tag not in _TIFF_STRUCTURAL}
    if info.orientation != 1:
        tiffinfo[274] = info.orientation  # Pillow drops the tag when it loads a TIFF
    compression = stored.info.get("compression")
    options: dict[str, Any] = {"tiffinfo": tiffinfo, "icc_profile": info.icc_profile}
    if compression and compression != "raw":
        options["compression"] = compression
    return options


def _webp_is_lossless(source: bytes, start: int = 12) -> bool:
    """RIFF chunks after the 12-byte header: VP8L is lossless, "VP8 " lossy; VP8X wraps them
    and an animation frame (ANMF) holds its own after a 16-byte frame header."""
    position = start
    while position + 8 <= len(source):
        chunk = source[position : position + 4]
        size = struct.unpack_from("<I", source, position + 4)[0]
        if chunk in (b"VP8L", b"VP8 "):
            return chunk == b"VP8L"
        if chunk == b"ANMF":
            return _webp_is_lossless(source[: position + 8 + size], position + 8 + 16)
        position += 8 + size + (size & 1)
    return False


def _jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Marker segments before the first scan, and the rest of the file from SOS on."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("no JPEG SOI marker")
    segments: list[tuple[int, bytes]] = []
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ValueError(f"no marker at offset {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xDA:
            return segments, data[position:]
        length = (
            0
            if 0xD0 <= marker <= 0xD7 or marker == 0x01
            else (struct.unpack_from(">H", data, position + 2)[0])
        )
        segments.append((marker, data[position : position + 2 + length]))
        position += 2 + length
    raise ValueError("no JPEG scan found")


def _is_jpeg_metadata(marker: int, segment: bytes) -> bool:
    return 0xE0 <= marker <= 0xEF or marker == 0xFE


def _splice_jpeg(source: bytes, encoded: bytes, notes: list[str]) -> bytes:
    """The new encoding's tables and scan with the original's APPn/COM segments, byte for byte
    (EXIF with its orientation, ICC, XMP, IPTC, comments). Adobe APP14 describes the colour
    transform of the *new* data, and MPF points at pictures we do not write: both come from
    the new encoding or are dropped."""
    try:
        original_segments, _ = _jpeg_segments(source)
        new_segments, scan = _jpeg_segments(encoded)
    except (ValueError, struct.error) as exc:
        notes.append(f"JPEG metadata could not be copied verbatim ({exc}); EXIF and ICC kept")
        return encoded
    kept = [
        segment
        for marker, segment in original_segments
        if _is_jpeg_metadata(marker, segment)
        and marker != 0xEE
        and not (marker == 0xE2 and segment[4:8] == b"MPF\x00")
    ]
    structure = [
        segment
        for marker, segment in new_segments
        if not _is_jpeg_metadata(marker, segment) or marker == 0xEE
    ]
    return b"\xff\xd8" + b"".join(kept) + b"".join(structure) + scan


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("no PNG signature")
    chunks: list[tuple[bytes, bytes]] = []
    position = len(_PNG_SIGNATURE)
    while position + 12 <= len(data):
        length = struct.unpack_from(">I", data, position)[0]
        kind = data[position + 4 : position + 8]
        chunks.append((kind, data[position : position + 12 + length]))
        position += 12 + length
        if kind == b"IEND":
            return chunks
    raise ValueError("PNG ends without IEND")


def _splice_png(source: bytes, encoded: bytes, notes: list[str]) -> bytes:
    """The new IHDR/PLTE/tRNS/IDAT with every other chunk of the original, in its place
    (iCCP, eXIf, pHYs, text, XMP ...). APNG animation chunks go with the animation."""
    try:
        original, new = _png_chunks(source), _png_chunks(encoded)
    except (ValueError, struct.error) as exc:
        notes.append(f"PNG metadata could not be copied ({exc}); output has pixels only")
        return encoded
    before_plte: list[bytes] = []
    after_plte: list[bytes] = []
    after_idat: list[bytes] = []
    bucket = before_plte
    for kind, raw in original:
        if kind == b"PLTE":
            bucket = after_plte
        elif kind == b"IDAT":
            bucket = after_idat
        elif kind not in _PNG_STRUCTURAL and kind not in _PNG_ANIMATION and kind != b"hIST":
            bucket.append(raw)
    part = {kind: raw for kind, raw in new if kind in (b"IHDR", b"PLTE", b"tRNS")}
    idat = [raw for kind, raw in new if kind == b"IDAT"]
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"".join(
        [
            _PNG_SIGNATURE,
            part[b"IHDR"],
            *before_plte,
            part.get(b"PLTE", b""),
            *after_plte,
            part.get(b"tRNS", b""),
            *idat,
            *after_idat,
            iend,
        ]
    )


def _encode_rgb16(
    source: bytes, info: ImageInfo, changes: list[_Change], notes: list[str]
) -> bytes:
    array = cv2.imdecode(np.frombuffer(source, np.uint8), cv2.IMREAD_UNCHANGED)
    if (
        array is None
        or array.dtype != np.uint16
        or array.ndim != 3
        or array.shape[:2] != (info.height, info.width)
    ):
        raise CorruptImage(f"{info.path}: the 16-bit {info.format} could not be re-read intact")
    for change in changes:
        stored = _to_stored(change, info.orientation, (info.width, info.height))
        x0, y0, x1, y1 = stored.box
        # OpenCV is BGR(A); v8 * 257 reads back as v8 through Pillow's high-byte reduction.
        view = array[y0:y1, x0:x1, :3]
        view[stored.mask] = stored.pixels[stored.mask][:, ::-1].astype(np.uint16) * 257
    method = _TO_UPRIGHT.get(info.orientation)
    if info.format == "PNG":
        ok, encoded = cv2.imencode(".png", array)
        return _splice_png(source, encoded.tobytes(), notes)
    if method is not None:
        array = transpose_array(array, method)
        notes.append("16-bit RGB TIFF: written upright (orientation tag not kept)")
    notes.append("16-bit RGB TIFF: ICC profile, EXIF and other tags were not kept")
    params = [cv2.IMWRITE_TIFF_COMPRESSION, 8]  # Adobe deflate: lossless
    if info.dpi:
        params += [cv2.IMWRITE_TIFF_RESUNIT, 2, cv2.IMWRITE_TIFF_XDPI, round(info.dpi[0])]
        params += [cv2.IMWRITE_TIFF_YDPI, round(info.dpi[1])]
    ok, encoded = cv2.imencode(".tiff", array, params)
    if not ok:
        raise CorruptImage(f"{info.path}: OpenCV could not encode the 16-bit TIFF")
    return encoded.tobytes()


# --- sidecars --------------------------------------------------------------------------------


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically: UTF-8 as is, sorted keys, indent 2. NaN and infinity
    become null (they are not JSON); numpy values and paths are converted."""
    text = json.dumps(_jsonable(obj), ensure_ascii=False, sort_keys=True, indent=2, allow_nan=False)
    with _output_errors(Path(path)):
        atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
