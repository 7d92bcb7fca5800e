"""The Pillow side of `image.resize`: what runs in its pool processes.

Everything here is plain synchronous code on picklable values, so that a
`ProcessPoolExecutor` can run it away from the worker's event loop: `init_process` is
the pool's initializer, `resize_job` decodes one source, makes every variant from the
one decoded image and writes each file atomically. Failures the caller cannot fix by
retrying are raised as `ImageRefused` (a google.rpc code and a message); anything else
(`OSError` from the disk, say) propagates as it is.
"""

from __future__ import annotations

import io
import os
import re
import resource
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from batchd.worker.handlers.image.paths import ImageRefused, confined_output, read_confined
from batchd.worker.process_pool import serve_owner

__all__ = [
    "DEFAULT_QUALITY",
    "EXTENSIONS",
    "FITS",
    "INPUT_FORMATS",
    "ResizeJob",
    "Variant",
    "init_process",
    "resize_job",
    "target_size",
]

# Formats a variant may be written in, by the name params use, with their file extension.
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
# Decoders a source may use (Pillow's format names). Pillow can read more, but each
# decoder is attack surface for untrusted uploads: these are the formats users upload.
INPUT_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
FITS = ("inside", "cover", "fill")
DEFAULT_QUALITY = {"jpeg": 85, "webp": 80}
# Where transparency has to go (JPEG has no alpha), it is laid over white.
_BACKGROUND = (255, 255, 255)
_PIXEL_COUNT = re.compile(r"\((\d+) pixels\)")


@dataclass(frozen=True)
class Variant:
    """One output image: `width` and/or `height` (0: follow the aspect ratio)."""

    name: str
    width: int
    height: int
    fit: str  # one of FITS
    format: str  # a key of EXTENSIONS, or "" for the source's
    quality: int  # 0: the format's default


@dataclass(frozen=True)
class ResizeJob:
    """One item's work. `source` is the downloaded bytes, or a path relative to
    `input_root` that must stay inside it once resolved."""

    source: bytes | str
    input_root: str
    output_root: str
    output: str  # path prefix inside output_root, e.g. "user-42/avatar"
    variants: tuple[Variant, ...]
    max_pixels: int
    max_bytes: int  # the largest source accepted, in bytes


def init_process(max_pixels: int, memory_limit: int = 0, owner_pid: int | None = None) -> None:
    """The pool's initializer: Pillow's own decompression-bomb guard at our limit, and
    its warning (between 1x and 2x the limit) turned into an error like the rest; with
    `memory_limit`, its address space is capped (RLIMIT_AS): an image that needs more
    raises MemoryError in its job, and the process goes on; with `owner_pid`, the
    process exits once that process (the worker) is gone."""
    serve_owner(owner_pid)
    if memory_limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def resize_job(job: ResizeJob) -> dict[str, Any]:
    """Decodes the source once, writes every variant, returns the item's output."""
    if isinstance(job.source, bytes):
        data = job.source
    else:
        data = read_confined(Path(job.input_root), job.source, job.max_bytes)
    image, source_format, (width, height) = _decode(data, job.max_pixels, _draft_side(job.variants))
    source = {"width": width, "height": height, "format": source_format.lower()}
    outputs = [
        _write_variant(image, (width, height), source_format, variant, job)
        for variant in job.variants
    ]
    return {"source": source, "variants": outputs}


def target_size(size: tuple[int, int], variant: Variant) -> tuple[int, int]:
    """The variant's pixel size for a source of `size` (already EXIF-oriented).

    inside  the largest size within width x height that keeps the aspect ratio, never
            larger than the source; a missing side does not constrain
    cover   exactly width x height: scaled to cover the box, then centre-cropped
    fill    exactly width x height: stretched, the aspect ratio is not kept
    """
    width, height = size
    if variant.fit in ("cover", "fill"):
        return variant.width, variant.height
    by_width = variant.width / width if variant.width else 1.0
    by_height = variant.height / height if variant.height else 1.0
    if min(by_width, by_height) >= 1.0:
        return width, height
    # The binding side is exact; the other is rounded from exact integer ratios, so
    # that anyone can predict it: round(height * variant.width / width).
    if by_width <= by_height:
        return variant.width, max(1, round(height * variant.width / width))
    return max(1, round(width * variant.height / height)), variant.height


def _draft_side(variants: Sequence[Variant]) -> int:
    """A side every variant can be made from: JPEG sources are decoded at a reduced
    scale (DCT scaling, much cheaper) while both their sides stay at least this long."""
    return max(max(v.width, v.height) for v in variants)


def _decode(
    data: bytes, max_pixels: int, draft_side: int
) -> tuple[Image.Image, str, tuple[int, int]]:
    """The source decoded and turned upright (EXIF orientation) in a mode every encoder
    takes, maybe at a reduced scale (see _draft_side); its format name; and its full
    upright size. Refuses what is not a complete image of a known format within the
    pixel limit."""
    try:
        return _decode_checked(data, max_pixels, draft_side)
    except UnidentifiedImageError as exc:  # before OSError: it is one
        raise ImageRefused(
            "cannot identify image file: not an image, or an unknown format"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(str(exc), max_pixels) from exc
    except OSError as exc:
        # The bytes are in memory: an OSError here is the image's fault, not the disk's.
        message = str(exc)
        if "truncated" in message.lower() or "broken data stream" in message:
            raise ImageRefused(f"truncated image: {message}") from exc
        raise ImageRefused(f"corrupt image: {message}") from exc
    except (ValueError, SyntaxError, EOFError, IndexError, KeyError) as exc:
        # What Pillow's decoders raise on malformed headers, chunks and EXIF blocks.
        raise ImageRefused(f"corrupt image: {type(exc).__name__}: {exc}") from exc


def _decode_checked(
    data: bytes, max_pixels: int, draft_side: int
) -> tuple[Image.Image, str, tuple[int, int]]:
    image = Image.open(io.BytesIO(data))  # reads the header only
    source_format = image.format or "unknown"
    if source_format not in INPUT_FORMATS:
        raise ImageRefused(f"unsupported format {source_format}")
    # Checked before any pixel is decoded, whatever Pillow's own guard says.
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise _too_many_pixels(f"({pixels} pixels)", max_pixels)
    upright = _upright_size(image)
    if source_format == "JPEG":
        image.draft("RGB" if image.mode == "RGB" else None, (draft_side, draft_side))
    image.load()
    return _working_mode(ImageOps.exif_transpose(image)), source_format, upright


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """The size once the EXIF orientation is applied: orientations 5 to 8 turn the image
    a quarter, swapping its sides."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in (5, 6, 7, 8):
        return image.height, image.width
    return image.width, image.height


def _too_many_pixels(pillow_message: str, max_pixels: int) -> ImageRefused:
    found = _PIXEL_COUNT.search(pillow_message)
    count = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return ImageRefused(
        f"image refused: {count}, more than image_max_pixels ({max_pixels:,}); "
        "it could be a decompression bomb",
    )


def _working_mode(image: Image.Image) -> Image.Image:
    """RGB, RGBA or L: modes LANCZOS resizes properly (palettes would be resized with
    nearest-neighbour) and that every output format can take, once alpha is handled."""
    if image.mode in ("RGB", "RGBA", "L"):
        return image
    if image.has_transparency_data:
        return image.convert("RGBA")
    return image.convert("RGB")


def _resized(image: Image.Image, full_size: tuple[int, int], variant: Variant) -> Image.Image:
    # From the full size, not the decoded one: a JPEG decoded at a reduced scale gives
    # the same variant sizes as a full decode.
    size = target_size(full_size, variant)
    if variant.fit == "cover":
        return ImageOps.fit(image, size, Image.Resampling.LANCZOS)
    if size == image.size:
        return image
    # reducing_gap: a cheap box reduction first, then LANCZOS; same look, far faster
    # for big reductions.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _encodable(image: Image.Image, output_format: str) -> Image.Image:
    if output_format != "jpeg" or image.mode != "RGBA":
        return image
    flat = Image.new("RGB", image.size, _BACKGROUND)
    flat.paste(image, mask=image.getchannel("A"))
    return flat


def _write_variant(
    image: Image.Image,
    full_size: tuple[int, int],
    source_format: str,
    variant: Variant,
    job: ResizeJob,
) -> dict[str, Any]:
    output_format = variant.format or _default_format(source_format)
    resized = _encodable(_resized(image, full_size, variant), output_format)
    options: dict[str, Any] = {}
    if output_format in DEFAULT_QUALITY:
        options["quality"] = variant.quality or DEFAULT_QUALITY[output_format]
    # No EXIF, XMP or comments are written (Pillow copies none unless told): uploads
    # often carry GPS positions and camera serials.
    buffer = io.BytesIO()
    resized.save(buffer, format=output_format.upper(), **options)
    encoded = buffer.getvalue()
    relative = f"{job.output}.{variant.name}.{EXTENSIONS[output_format]}"
    _write_atomically(confined_output(Path(job.output_root), relative), encoded)
    return {
        "name": variant.name,
        "path": relative,
        "width": resized.width,
        "height": resized.height,
        "bytes": len(encoded),
        "format": output_format,
    }


def _default_format(source_format: str) -> str:
    """The source's format when it is one we write; PNG (lossless, keeps alpha) else."""
    name = source_format.lower()
    return name if name in EXTENSIONS else "png"


def _write_atomically(path: Path, data: bytes) -> None:
    """A temporary file in the same directory, renamed over the target: readers, re-runs
    and a concurrent duplicate of the item see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600; other services serve these
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
