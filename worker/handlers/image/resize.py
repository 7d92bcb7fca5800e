"""`image.resize`: batch image resizing for user uploads.

Each item names a source — a path inside `image_input_dir` or an http(s) URL — and the
variants to make of it; each variant is written inside `image_output_dir` as
`<output>.<name>.<ext>`, atomically. docs/handlers/image.md is the full reference.

Decoding, resizing and encoding are CPU work that would stall the worker's event loop
(and every other item it runs), so they go to a pool of `image_processes` processes
(batchd.worker.process_pool), started by the first item and shut down by the shutdown
hook. The pool processes read local sources and write the variant files themselves:
only the params go in and the small output dict comes back (downloaded sources go in as
bytes).

How an item ends, besides SUCCEEDED:

    corrupt, truncated, unknown format      fail, INVALID_ARGUMENT
    more than image_max_pixels pixels       fail, INVALID_ARGUMENT (decompression bomb)
    path outside its directory              fail, PERMISSION_DENIED
    local source missing                    fail, NOT_FOUND
    URL answered 4xx                        fail, as http.request (404 NOT_FOUND, ...)
    URL 408, 429, 5xx, connection error     retry (429 and 503 also slow the host down)
    disk error, a pool process crashed      retry, UNAVAILABLE (the pool is recreated)
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from batchd.core.config import SettingError, setting
from batchd.core.domain import BatchOptions, RetryPolicy
from batchd.worker.handler import (
    Code,
    Handler,
    ItemContext,
    PermanentError,
    RetryableError,
    WorkerInfo,
)
from batchd.worker.handlers.http import host_key
from batchd.worker.handlers.image.fetch import fetch
from batchd.worker.handlers.image.ops import (
    EXTENSIONS,
    FITS,
    ResizeJob,
    Variant,
    init_process,
    resize_job,
)
from batchd.worker.handlers.image.paths import ImageRefused, check_relative, tenant_root
from batchd.worker.process_pool import HandlerPool

__all__ = ["MAX_SIDE", "MAX_SOURCE_BYTES", "PARAMS_SCHEMA", "ImageSettings", "image_resize_handler"]

# The largest source accepted, downloaded or local. Sources wait in memory for a pool
# process; at most _QUEUED_PER_PROCESS x image_processes of them at once.
MAX_SOURCE_BYTES = 32 * 1024 * 1024
MAX_SIDE = 10_000  # the largest width or height a variant may ask for
# Items per pool process that may be downloading, queued or resizing at once: enough to
# keep the processes busy while the next sources arrive, few enough to bound memory.
_QUEUED_PER_PROCESS = 4
USER_AGENT = "batchd-image-resize/0.1"

_VARIANT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {
            "type": "string",
            "pattern": "^[A-Za-z0-9_-]{1,64}$",
            "description": "Names the file: <output>.<name>.<ext>; unique in the item.",
        },
        "width": {"type": "integer", "minimum": 1, "maximum": MAX_SIDE},
        "height": {"type": "integer", "minimum": 1, "maximum": MAX_SIDE},
        "fit": {
            "enum": list(FITS),
            "default": "inside",
            "description": "inside: within the box, aspect kept, never enlarged; cover: "
            "exactly the box, centre-cropped; fill: exactly the box, stretched.",
        },
        "format": {
            "enum": list(EXTENSIONS),
            "description": "Default: the source's format (PNG for GIF, BMP, TIFF).",
        },
        "quality": {"type": "integer", "minimum": 1, "maximum": 100},
    },
    "required": ["name"],
    "additionalProperties": False,
    "anyOf": [{"required": ["width"]}, {"required": ["height"]}],
    # cover and fill make exactly width x height: both are needed.
    "if": {"required": ["fit"], "properties": {"fit": {"enum": ["cover", "fill"]}}},
    "then": {"required": ["width", "height"]},
}

PARAMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "source": {
            "type": "string",
            "minLength": 1,
            "maxLength": 8192,
            "description": "An http(s) URL, or a path relative to the worker's image_input_dir.",
        },
        "variants": {"type": "array", "minItems": 1, "maxItems": 16, "items": _VARIANT_SCHEMA},
        "output": {
            "type": "string",
            "minLength": 1,
            "maxLength": 1024,
            "description": "Path prefix inside the worker's image_output_dir, e.g. "
            '"user-42/avatar".',
        },
    },
    "required": ["source", "variants", "output"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class ImageSettings:
    """image.resize's settings: BATCHD_IMAGE_* / --image-*."""

    image_processes: int = setting(
        2, "processes per worker that decode and resize images for image.resize"
    )
    image_max_pixels: int = setting(
        50_000_000, "image.resize refuses images of more pixels (decompression bombs)"
    )
    image_input_dir: str = setting(
        "",
        "local image paths given to image.resize are read from inside this directory (empty: "
        "local paths are refused, only URLs are fetched); it may not contain, nor lie within, "
        "image_output_dir",
    )
    image_output_dir: str = setting(
        ".data/images", "image.resize writes its variants inside this directory"
    )
    image_memory_limit: int = setting(
        1024 * 1024 * 1024,
        "bytes of address space each image.resize process may take (RLIMIT_AS); an image "
        "that needs more fails its item, and the process goes on (0: no limit)",
    )


class _ImageResize:
    """The handler's state in one worker process: the pool, the session, the roots."""

    def __init__(self, max_source_bytes: int) -> None:
        self._max_source_bytes = max_source_bytes
        self._pool = HandlerPool(1, init_process)
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(1)
        self._max_pixels = 0
        self._input_root: Path | None = None
        self._output_root = Path()
        self._memory_limit = 0

    async def startup(self, worker: WorkerInfo) -> None:
        settings = worker.settings.section(ImageSettings)
        self._max_pixels = settings.image_max_pixels
        # Each process imports Pillow when it starts: a worker that never resizes an
        # image starts none.
        self._pool = HandlerPool(
            settings.image_processes,
            init_process,
            (self._max_pixels, settings.image_memory_limit),
        )
        self._input_root, self._output_root = await asyncio.to_thread(
            _roots, settings.image_input_dir, settings.image_output_dir
        )
        self._slots = asyncio.Semaphore(self._pool.processes * _QUEUED_PER_PROCESS)
        self._session = worker.egress_session(headers={"User-Agent": USER_AGENT})

    async def shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._pool.close()

    async def run(self, params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        if self._session is None:
            raise RuntimeError("image.resize used before its startup hook ran")
        source = str(params["source"])
        remote = _is_url(source)
        variants = _variants(params["variants"], self._max_pixels)
        try:  # refused before any work: the pool checks symlinks again on the disk
            check_relative(str(params["output"]), "output", "image_output_dir", ctx.tenant)
            if not remote:
                if self._input_root is None:
                    raise ImageRefused(
                        "local image paths are not served here (only http(s) URLs): set "
                        "BATCHD_IMAGE_INPUT_DIR to allow them",
                        Code.PERMISSION_DENIED,
                    )
                check_relative(source, "source", "image_input_dir", ctx.tenant)
        except ImageRefused as exc:
            raise PermanentError(exc.message, code=exc.code) from None
        async with self._slots:
            data = await fetch(self._session, source, self._max_source_bytes) if remote else None
            input_root = tenant_root(self._input_root, ctx.tenant) if self._input_root else None
            job = ResizeJob(
                source=source if data is None else data,
                input_root=str(input_root or ""),
                output_root=str(tenant_root(self._output_root, ctx.tenant)),
                output=str(params["output"]),
                variants=variants,
                max_pixels=self._max_pixels,
                max_bytes=self._max_source_bytes,
            )
            return await self._in_pool(job)

    async def _in_pool(self, job: ResizeJob) -> dict[str, Any]:
        pool = await self._pool.started()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, resize_job, job)
        except ImageRefused as exc:
            raise PermanentError(exc.message, code=exc.code) from None
        except MemoryError:
            # The process's RLIMIT_AS stopped it; the process itself goes on.
            raise PermanentError(
                "the image needs more memory than an image process may take "
                "(BATCHD_IMAGE_MEMORY_LIMIT)",
                code=Code.RESOURCE_EXHAUSTED,
            ) from None
        except BrokenProcessPool as exc:
            # A pool process died (killed, out of memory, a crash in a decoder): every
            # item it held fails this attempt; a fresh pool serves the retries.
            self._pool.replace(pool)
            raise RetryableError(
                "an image process died; the pool was restarted", code=Code.UNAVAILABLE
            ) from exc
        except OSError as exc:  # reading the source or writing a variant
            raise RetryableError(f"file I/O failed: {exc}", code=Code.UNAVAILABLE) from exc


def image_resize_handler(*, max_source_bytes: int = MAX_SOURCE_BYTES) -> Handler:
    """A fresh `image.resize` handler, with its own (not yet started) pool and session."""
    state = _ImageResize(max_source_bytes)
    return Handler(
        name="image.resize",
        description=(
            "Resizes an image (a path in image_input_dir or an http(s) URL) into variants "
            "written as <output>.<name>.<ext> in image_output_dir; returns the source's "
            "and each variant's size. Corrupt images and decompression bombs fail the item."
        ),
        params_schema=PARAMS_SCHEMA,
        default_options=BatchOptions(
            chunk_size=20,
            retry_policy=RetryPolicy(
                max_attempts=3, min_backoff=1.0, max_backoff=30.0, max_doublings=3
            ),
        ),
        settings=ImageSettings,
        run=state.run,
        startup=state.startup,
        shutdown=state.shutdown,
        rate_key=_rate_key,
    )


def _roots(input_dir: str, output_dir: str) -> tuple[Path | None, Path]:
    """Both directories resolved, once: the confinement checks compare resolved paths
    with these. The output directory is created if missing. No input directory: local
    sources are refused. Overlapping ones are a configuration error: one caller's
    variants would be another's sources."""
    output_root = Path(output_dir).resolve()
    output_root.mkdir(parents=True, exist_ok=True)
    if not input_dir:
        return None, output_root
    input_root = Path(input_dir).resolve()
    if (
        input_root == output_root
        or input_root in output_root.parents
        or (output_root in input_root.parents)
    ):
        raise SettingError(
            f"image_input_dir ({input_root}) and image_output_dir ({output_root}) overlap: "
            "variants would be readable as sources; give them separate directories"
        )
    return input_root, output_root


def _is_url(source: str) -> bool:
    return source[:8].lower().startswith(("http://", "https://"))


def _rate_key(params: Mapping[str, Any]) -> str | None:
    """Downloads share their host's back-off with http.request; local files have none."""
    source = str(params.get("source", ""))
    return host_key({"url": source}) if _is_url(source) else None


def _variants(raw: Sequence[Mapping[str, Any]], max_pixels: int) -> tuple[Variant, ...]:
    variants = tuple(
        Variant(
            name=str(v["name"]),
            width=int(v.get("width", 0)),
            height=int(v.get("height", 0)),
            fit=str(v.get("fit", "inside")),
            format=str(v.get("format", "")),
            quality=int(v.get("quality", 0)),
        )
        for v in raw
    )
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise PermanentError(f"variant names must be unique: {names}", code=Code.INVALID_ARGUMENT)
    for v in variants:
        # inside never enlarges, so only cover and fill can make an image bigger than its
        # source: hold them to the same pixel limit as sources.
        if v.fit != "inside" and v.width * v.height > max_pixels:
            raise PermanentError(
                f"variant {v.name!r}: {v.width}x{v.height} is more than image_max_pixels "
                f"({max_pixels:,}) pixels",
                code=Code.INVALID_ARGUMENT,
            )
    return variants
