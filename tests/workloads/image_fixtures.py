"""Real images and a real HTTP server for the `image.resize` tests.

- `halves(size, left, right)`: an image whose left half is one colour and right half
  another, so that a test can tell where a crop or a rotation put them.
- `encode(image, format, **options)`: the encoded bytes.
- `generate_images(directory, count, corrupt)`: `count` files of varied sizes and formats
  (JPEG, PNG, WebP, GIF), `corrupt` of them truncated or random bytes; what each is.
- `image_server(files)`: an aiohttp server on 127.0.0.1 (port 0) serving `files`.
"""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from PIL import Image, ImageDraw
from support.http_peer import serving

FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}


def halves(
    size: tuple[int, int], left: tuple[int, ...], right: tuple[int, ...], mode: str = "RGB"
) -> Image.Image:
    image = Image.new(mode, size, left)
    ImageDraw.Draw(image).rectangle((size[0] // 2, 0, size[0], size[1]), fill=right)
    return image


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


@dataclass(frozen=True)
class GeneratedImage:
    name: str  # the file name, relative to the directory
    width: int
    height: int
    format: str  # Pillow's name: JPEG, PNG, WEBP, GIF
    corrupt: bool


def generate_images(
    directory: Path, count: int, corrupt: int, *, sides: tuple[int, int] = (50, 400), seed: int = 42
) -> list[GeneratedImage]:
    """`count` images with sides in the `sides` range (pixels), in FORMATS in turn;
    `corrupt` of them, spread evenly and over every format, are cut in half (every other
    one) or random bytes (the rest)."""
    rng = random.Random(seed)
    broken = _corrupt_indexes(count, corrupt)
    generated = []
    for i in range(count):
        image_format = FORMATS[i % len(FORMATS)]
        width, height = rng.randint(*sides), rng.randint(*sides)
        name = f"img-{i:05d}.{EXTENSIONS[image_format]}"
        data = encode(_picture(rng, width, height), image_format)
        if broken.get(i) == "truncated":
            data = data[: len(data) // 2]
        elif broken.get(i) == "random":
            data = rng.randbytes(len(data))
        (directory / name).write_bytes(data)
        generated.append(GeneratedImage(name, width, height, image_format, i in broken))
    return generated


def _corrupt_indexes(count: int, corrupt: int) -> dict[int, str]:
    """Which images to spoil, and how: one per `count // corrupt` images, the format
    cycling twice as slowly as the kind of damage, so both kinds meet every format."""
    if not corrupt:
        return {}
    spread = count // corrupt
    indexes = {}
    for k in range(corrupt):
        wanted_format = (k // 2) % len(FORMATS)
        start = k * spread
        index = start + (wanted_format - start) % len(FORMATS)
        indexes[index] = "truncated" if k % 2 == 0 else "random"
    return indexes


def _picture(rng: random.Random, width: int, height: int) -> Image.Image:
    """A background and a few shapes: cheap to make and to encode."""
    image = Image.new("RGB", (width, height), _colour(rng))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        box = (x0, y0, x0 + rng.randint(5, width), y0 + rng.randint(5, height))
        draw.ellipse(box, fill=_colour(rng))
    return image


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


@contextlib.asynccontextmanager
async def image_server(files: Mapping[str, bytes]) -> AsyncIterator[str]:
    """A real HTTP server; its base URL.

    /files/<name>       200 with files[name], else 404
    /status/<code>      that status, a short text body
    """

    async def serve_file(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files:
            raise web.HTTPNotFound()
        return web.Response(body=files[name], content_type="application/octet-stream")

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="no")

    app = web.Application()
    app.router.add_get("/files/{name}", serve_file)
    app.router.add_get("/status/{code}", status)
    async with serving(app) as base:
        yield base
