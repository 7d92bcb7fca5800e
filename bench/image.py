"""`image.resize` items against a bare ProcessPoolExecutor script doing the same resizes.

N images (JPEG, PNG, WebP and GIF in turn, 50-800 px a side, generated once into a
temporary directory) are each made into two variants — a 64x64 WebP `cover` thumbnail
and a 320-px-wide `inside` copy in the source's format — first by the baseline, a bare
`ProcessPoolExecutor` of `--processes` processes mapping a plain Pillow function over
the files (read, decode, resize, encode, write), then by one batchd worker with
BATCHD_IMAGE_PROCESSES equal to it, uploaded and watched to the terminal snapshot, then
by the baseline again: the baseline figure is the mean of its two runs. Beside batchd's
items/s, Redis commands per item (INFO commandstats delta from the upload to the
terminal snapshot) and memory per pending item (the growth of Redis's stored bytes,
`bench.service.redis_stored_bytes`, over a second upload of the same items while the
worker is paused, divided by N; that batch is then cancelled, none of its images
resized).

    .venv/bin/python -m bench.image --images 5000   # a full run
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from batchd.client import AsyncClient
from batchd.worker.handlers import builtin_handlers
from bench.service import (
    Measured,
    Service,
    report,
    running_service,
    upload_and_measure,
    wait_for_handler,
)

FORMATS = (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"))
VARIANTS = [
    {"name": "thumb", "width": 64, "height": 64, "fit": "cover", "format": "webp"},
    {"name": "medium", "width": 320},
]
HANDLER = "batchd.worker.handlers.image:image_resize_handler"


def generate(directory: Path, index: int) -> str:
    """Image `index`: a background, shapes and a band of noise; its file name."""
    rng = random.Random(index)
    image_format, extension = FORMATS[index % len(FORMATS)]
    width, height = rng.randint(50, 800), rng.randint(50, 800)
    image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        box = (x0, y0, x0 + rng.randint(5, width), y0 + rng.randint(5, height))
        draw.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    image.paste(Image.effect_noise((width, max(height // 8, 1)), 48).convert("RGB"), (0, 0))
    name = f"img-{index:06d}.{extension}"
    image.save(directory / name, format=image_format)
    return name


def bare_resize(job: tuple[Path, str, Path]) -> None:
    """What a plain script would do for one image, with the same variants and formats."""
    input_dir, name, output_dir = job
    with Image.open(input_dir / name) as source:
        source_format = (source.format or "PNG").lower()
        image = ImageOps.exif_transpose(source)
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    ImageOps.fit(image, (64, 64), Image.Resampling.LANCZOS).save(
        output_dir / f"{name}.thumb.webp", quality=80
    )
    if image.width > 320:
        height = max(1, round(image.height * 320 / image.width))
        image = image.resize((320, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    medium_format = source_format if source_format in ("jpeg", "png", "webp") else "png"
    image.save(output_dir / f"{name}.medium.{medium_format}", format=medium_format)


def _context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def bare_images_per_second(input_dir: Path, names: list[str], out: Path, processes: int) -> float:
    out.mkdir(parents=True)
    jobs = [(input_dir, name, out) for name in names]
    with ProcessPoolExecutor(processes, mp_context=_context()) as pool:
        list(pool.map(bare_resize, jobs[:processes]))  # processes started, Pillow imported
        started = time.perf_counter()
        list(pool.map(bare_resize, jobs, chunksize=16))
        return len(jobs) / (time.perf_counter() - started)


def items(names: list[str]) -> Iterator[tuple[str, dict[str, object]]]:
    for i, name in enumerate(names):
        yield f"img-{i}", {"source": name, "output": f"batchd/{name}", "variants": VARIANTS}


async def batchd_run(service: Service, names: list[str]) -> Measured:
    async with AsyncClient(service.target) as client:
        async with asyncio.timeout(60):  # a worker that failed to start never publishes
            await wait_for_handler(client, "image.resize")
        return await upload_and_measure(
            client, service, "image.resize", lambda: items(names), len(names)
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=2_000)
    parser.add_argument("--processes", type=int, default=2, help="image processes, both sides")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        input_dir, output_dir = Path(tmp) / "in", Path(tmp) / "out"
        input_dir.mkdir()
        with ProcessPoolExecutor(mp_context=_context()) as pool:
            names = list(pool.map(generate, [input_dir] * args.images, range(args.images)))
        before = bare_images_per_second(input_dir, names, output_dir / "bare-1", args.processes)
        env = {
            "BATCHD_IMAGE_PROCESSES": str(args.processes),
            "BATCHD_IMAGE_INPUT_DIR": str(input_dir),
            "BATCHD_IMAGE_OUTPUT_DIR": str(output_dir),
            "BATCHD_EGRESS_ALLOW": "127.0.0.1",  # the local server of the sources
        }
        if not any(handler.name == "image.resize" for handler in builtin_handlers()):
            env["BATCHD_HANDLERS"] = HANDLER  # until image.resize is a built-in
        with running_service(env=env) as service:
            measured = asyncio.run(batchd_run(service, names))
        # The baseline again after the service: on shared cores, the mean of a run on
        # each side of it is the fairer comparison.
        after = bare_images_per_second(input_dir, names, output_dir / "bare-2", args.processes)
    bare = (before + after) / 2
    rate = measured.items_per_second
    report(
        {
            "images": args.images,
            "processes": args.processes,
            "items_per_second": rate,
            "bare_pool_images_per_second": bare,
            "ratio_to_bare": rate / bare,
            "bare_before_images_per_second": before,
            "bare_after_images_per_second": after,
            **measured.redis_figures(),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
