"""`image.resize` for real: the handler with its process pool, real files, a real HTTP
server; then 2,000 images through a real server and a worker subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from PIL import Image
from support.faults import wait_for_handler
from support.net import find_free_port
from support.processes import ServiceProcess, worker
from workloads.image_fixtures import encode, generate_images, halves, image_server

from batchd.client import AsyncClient, BatchState, ItemState
from batchd.core.config import SettingError, Settings
from batchd.server.app import BatchdServer, start_server
from batchd.testing import StartedHandler, open_handler, params_violations
from batchd.worker.handler import Code, PermanentError, RetryableError
from batchd.worker.handlers import builtin_handlers
from batchd.worker.handlers.image import image_resize_handler

RED, BLUE = (255, 0, 0), (0, 0, 255)
MAX_PIXELS = 1_000_000
MAX_SOURCE_BYTES = 2_000_000


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("images")
    (root / "in").mkdir()
    return root / "in", root / "out"


@pytest.fixture(scope="module")
async def resizer(dirs: tuple[Path, Path]) -> AsyncIterator[StartedHandler]:
    """The handler as a worker runs it: startup hook (a real pool of 2 processes),
    params checked against its schema, shutdown hook at the end of the module."""
    settings = Settings.of(
        image_processes=2,
        image_max_pixels=MAX_PIXELS,
        image_input_dir=str(dirs[0]),
        image_output_dir=str(dirs[1]),
        egress_allow="127.0.0.1",  # image_server, a local peer
    )
    handler = image_resize_handler(max_source_bytes=MAX_SOURCE_BYTES)
    async with open_handler(handler, settings=settings, concurrency=20) as started:
        yield started


def put(dirs: tuple[Path, Path], name: str, data: bytes) -> str:
    (dirs[0] / name).write_bytes(data)
    return name


def opened(dirs: tuple[Path, Path], path: str) -> Image.Image:
    image = Image.open(dirs[1] / path)
    image.load()
    return image


def rgb(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    pixel = image.getpixel((x, y))
    assert isinstance(pixel, tuple)
    return pixel


async def test_fit_modes(resizer: StartedHandler, dirs: tuple[Path, Path]) -> None:
    source = put(dirs, "wide.png", encode(halves((400, 200), RED, BLUE), "PNG"))
    variants = [
        {"name": "box", "width": 100, "height": 100},  # inside is the default
        {"name": "by-width", "width": 300, "fit": "inside"},
        {"name": "by-height", "height": 50},
        {"name": "no-enlarge", "width": 1000, "height": 1000},
        {"name": "cover", "width": 100, "height": 100, "fit": "cover"},
        {"name": "fill", "width": 50, "height": 120, "fit": "fill"},
    ]
    output = await resizer.call({"source": source, "output": "fit/wide", "variants": variants})
    assert output["source"] == {"width": 400, "height": 200, "format": "png"}
    sizes = {v["name"]: (v["width"], v["height"]) for v in output["variants"]}
    assert sizes == {
        "box": (100, 50),
        "by-width": (300, 150),
        "by-height": (100, 50),
        "no-enlarge": (400, 200),
        "cover": (100, 100),
        "fill": (50, 120),
    }
    for variant in output["variants"]:
        assert variant["path"] == f"fit/wide.{variant['name']}.png"
        image = opened(dirs, variant["path"])
        assert image.size == (variant["width"], variant["height"])
        assert variant["bytes"] == (dirs[1] / variant["path"]).stat().st_size
    # cover keeps the centre 200x200: still red on the left, blue on the right.
    cover = opened(dirs, "fit/wide.cover.png").convert("RGB")
    assert cover.getpixel((10, 50)) == RED
    assert cover.getpixel((90, 50)) == BLUE


async def test_formats_and_quality(resizer: StartedHandler, dirs: tuple[Path, Path]) -> None:
    photo = Image.effect_noise((300, 300), 40).convert("RGB")  # noise: quality shows
    source = put(dirs, "photo.jpg", encode(photo, "JPEG", quality=95))
    variants = [
        {"name": "same", "width": 200},
        {"name": "png", "width": 200, "format": "png"},
        {"name": "webp", "width": 200, "format": "webp", "quality": 50},
        {"name": "low", "width": 200, "format": "jpeg", "quality": 10},
        {"name": "high", "width": 200, "format": "jpeg", "quality": 95},
    ]
    output = await resizer.call({"source": source, "output": "fmt/photo", "variants": variants})
    by_name = {v["name"]: v for v in output["variants"]}
    expected = {"same": "jpeg", "png": "png", "webp": "webp", "low": "jpeg", "high": "jpeg"}
    for name, image_format in expected.items():
        assert by_name[name]["format"] == image_format
        assert opened(dirs, by_name[name]["path"]).format == image_format.upper()
    assert by_name["same"]["path"] == "fmt/photo.same.jpg"
    assert by_name["low"]["bytes"] < by_name["high"]["bytes"] / 2


async def test_gif_defaults_to_png_and_alpha_to_white_jpeg(
    resizer: StartedHandler, dirs: tuple[Path, Path]
) -> None:
    gif = put(dirs, "anim.gif", encode(halves((80, 40), RED, BLUE), "GIF"))
    output = await resizer.call(
        {"source": gif, "output": "gif/anim", "variants": [{"name": "v", "width": 40}]}
    )
    assert output["source"]["format"] == "gif"
    assert output["variants"][0]["format"] == "png"
    assert opened(dirs, "gif/anim.v.png").size == (40, 20)

    clear = halves((60, 60), (0, 0, 0, 0), (0, 0, 255, 255), mode="RGBA")
    source = put(dirs, "alpha.png", encode(clear, "PNG"))
    variants = [{"name": "j", "width": 60, "format": "jpeg"}, {"name": "p", "width": 60}]
    await resizer.call({"source": source, "output": "alpha/a", "variants": variants})
    flattened = opened(dirs, "alpha/a.j.jpg")
    assert flattened.mode == "RGB"
    assert all(abs(a - b) <= 3 for a, b in zip(rgb(flattened, 5, 30), (255, 255, 255), strict=True))
    assert opened(dirs, "alpha/a.p.png").mode == "RGBA"  # PNG keeps the alpha


async def test_exif_orientation_applied_and_metadata_stripped(
    resizer: StartedHandler, dirs: tuple[Path, Path]
) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; viewers rotate 90 degrees clockwise
    exif[0x010F] = "Camera maker"  # Make: metadata that must not be copied
    sideways = halves((200, 100), RED, BLUE)
    source = put(dirs, "turned.jpg", encode(sideways, "JPEG", exif=exif, quality=95))
    variants = [{"name": "v", "width": 50, "height": 50}]
    output = await resizer.call({"source": source, "output": "exif/t", "variants": variants})
    assert output["source"] == {"width": 100, "height": 200, "format": "jpeg"}
    image = opened(dirs, "exif/t.v.jpg")
    assert image.size == (25, 50)
    # Turned clockwise, the red left half is now on top.
    assert rgb(image, 12, 5)[0] > 200
    assert rgb(image, 12, 45)[2] > 200
    assert not image.getexif()


async def test_paths_outside_their_directories_are_refused(
    resizer: StartedHandler, dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(encode(halves((10, 10), RED, BLUE), "PNG"))
    (dirs[0] / "link-out.png").symlink_to(outside)
    (dirs[0] / "dir-out").symlink_to(tmp_path, target_is_directory=True)
    (dirs[1] / "out-link").symlink_to(tmp_path, target_is_directory=True)
    put(dirs, "fine.png", outside.read_bytes())
    variants = [{"name": "v", "width": 5}]
    refused = [
        ("../secret.png", "o/a"),
        ("sub/../../secret.png", "o/b"),
        (str(outside), "o/c"),
        ("link-out.png", "o/d"),
        ("dir-out/secret.png", "o/e"),
        ("fine.png", "../escaped"),
        ("fine.png", "/tmp/escaped"),
        ("fine.png", "out-link/escaped"),
    ]
    for source, output in refused:
        with pytest.raises(PermanentError) as caught:
            await resizer.call({"source": source, "output": output, "variants": variants})
        assert caught.value.code == Code.PERMISSION_DENIED, (source, output)
    assert sorted(os.listdir(tmp_path)) == ["secret.png"]
    with pytest.raises(PermanentError) as missing:
        await resizer.call({"source": "nope.png", "output": "o/f", "variants": variants})
    assert missing.value.code == Code.NOT_FOUND


async def test_each_tenant_reads_and_writes_only_its_own_directories(
    resizer: StartedHandler, dirs: tuple[Path, Path]
) -> None:
    image = encode(halves((10, 10), RED, BLUE), "PNG")
    for owner in ("acme", "globex"):
        (dirs[0] / "tenants" / owner).mkdir(parents=True, exist_ok=True)
        (dirs[0] / "tenants" / owner / "logo.png").write_bytes(image)
    put(dirs, "house.png", image)
    variants = [{"name": "v", "width": 5}]

    output = await resizer.call(
        {"source": "logo.png", "output": "t/logo", "variants": variants}, batch_id="acme~b1"
    )
    assert output["variants"][0]["path"] == "t/logo.v.png"  # as the tenant named it
    assert (dirs[1] / "tenants" / "acme" / "t" / "logo.v.png").is_file()
    # The default tenant's files, another tenant's, and the tenants' tree are out of reach.
    refused = [
        ("acme~b2", "house.png", Code.NOT_FOUND),
        ("acme~b3", "tenants/globex/logo.png", Code.NOT_FOUND),
        ("b4", "tenants/acme/logo.png", Code.PERMISSION_DENIED),
    ]
    for batch_id, source, code in refused:
        with pytest.raises(PermanentError) as caught:
            await resizer.call(
                {"source": source, "output": "x", "variants": variants}, batch_id=batch_id
            )
        assert caught.value.code == code, (batch_id, source)
    with pytest.raises(PermanentError) as caught:
        await resizer.call(
            {"source": "house.png", "output": "tenants/acme/t/logo", "variants": variants}
        )
    assert caught.value.code == Code.PERMISSION_DENIED
    assert "tenants/" in caught.value.message


async def test_http_sources(resizer: StartedHandler, dirs: tuple[Path, Path]) -> None:
    files = {
        "photo.webp": encode(halves((120, 60), RED, BLUE), "WEBP"),
        "huge.bin": os.urandom(MAX_SOURCE_BYTES + 1),
    }
    variants = [{"name": "v", "width": 30}]
    async with image_server(files) as base:

        async def call(url: str) -> dict[str, Any]:
            return await resizer.call({"source": url, "output": "web/x", "variants": variants})

        output = await call(f"{base}/files/photo.webp")
        assert output["source"] == {"width": 120, "height": 60, "format": "webp"}
        assert opened(dirs, "web/x.v.webp").size == (30, 15)
        with pytest.raises(PermanentError) as not_found:
            await call(f"{base}/files/missing.png")
        assert not_found.value.code == Code.NOT_FOUND
        with pytest.raises(PermanentError) as too_large:
            await call(f"{base}/files/huge.bin")
        assert too_large.value.code == Code.INVALID_ARGUMENT
        assert f"{MAX_SOURCE_BYTES:,}" in too_large.value.message
        with pytest.raises(RetryableError) as server_error:
            await call(f"{base}/status/500")
        assert server_error.value.code == Code.UNAVAILABLE
    with pytest.raises(RetryableError) as refused:
        await call(f"http://127.0.0.1:{find_free_port()}/files/photo.webp")
    assert refused.value.code == Code.UNAVAILABLE


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (os.urandom(5000), "cannot identify image file"),
        (encode(Image.effect_noise((200, 200), 50), "JPEG")[:3000], "truncated image"),
        (encode(halves((20, 20), RED, BLUE), "PPM"), "unsupported format PPM"),
    ],
    ids=["random-bytes", "truncated-jpeg", "ppm"],
)
async def test_bad_images_fail_permanently(
    resizer: StartedHandler, dirs: tuple[Path, Path], data: bytes, message: str
) -> None:
    source = put(dirs, f"bad-{message.split()[-1]}", data)
    with pytest.raises(PermanentError) as caught:
        await resizer.call(
            {"source": source, "output": "bad/x", "variants": [{"name": "v", "width": 10}]}
        )
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert caught.value.message.startswith(message)


@pytest.mark.parametrize("side", [10_000, 1_100], ids=["100-megapixels", "just-over"])
async def test_decompression_bombs_are_refused(
    resizer: StartedHandler, dirs: tuple[Path, Path], side: int
) -> None:
    # A bilevel PNG of side x 1,000..10,000 compresses to a few KiB: cheap to make,
    # expensive to decode. 1,100 x 1,000 is within Pillow's own error threshold (2x the
    # limit), where it only warns.
    bomb = encode(Image.new("1", (side, max(side, 1_000))), "PNG")
    source = put(dirs, f"bomb-{side}.png", bomb)
    with pytest.raises(PermanentError) as caught:
        await resizer.call(
            {"source": source, "output": "bomb/x", "variants": [{"name": "v", "width": 10}]}
        )
    assert caught.value.code == Code.INVALID_ARGUMENT
    pixels = side * max(side, 1_000)
    assert f"{pixels:,} pixels" in caught.value.message
    assert f"{MAX_PIXELS:,}" in caught.value.message


async def test_large_cover_variants_are_refused(
    resizer: StartedHandler, dirs: tuple[Path, Path]
) -> None:
    source = put(dirs, "small.png", encode(halves((20, 20), RED, BLUE), "PNG"))
    variants = [{"name": "v", "width": 2000, "height": 1000, "fit": "cover"}]
    with pytest.raises(PermanentError) as caught:
        await resizer.call({"source": source, "output": "big/x", "variants": variants})
    assert caught.value.code == Code.INVALID_ARGUMENT


def test_params_schema() -> None:
    handler = image_resize_handler()
    good = {"source": "a.png", "output": "o/a", "variants": [{"name": "v", "width": 10}]}
    assert params_violations(handler, good) == []
    bad: list[dict[str, Any]] = [
        {**good, "extra": 1},
        {**good, "variants": []},
        {**good, "variants": [{"name": "v"}]},  # neither width nor height
        {**good, "variants": [{"name": "v", "width": 10, "fit": "cover"}]},  # cover needs both
        {**good, "variants": [{"name": "v", "width": 10, "format": "gif"}]},
        {**good, "variants": [{"name": "v", "width": 10, "quality": 0}]},
        {**good, "variants": [{"name": "a.b", "width": 10}]},
        {**good, "variants": [{"name": "v", "width": 10, "colour": "red"}]},
        {"source": "a.png", "variants": good["variants"]},
    ]
    for params in bad:
        assert params_violations(handler, params), params


@pytest.mark.slow
async def test_event_loop_stays_free_while_images_resize(
    resizer: StartedHandler, dirs: tuple[Path, Path]
) -> None:
    # Noise resizes slowly: eight of them keep both pool processes busy for a while.
    source = put(dirs, "noise.png", encode(Image.effect_noise((900, 900), 60), "PNG"))
    variants = [{"name": f"v{i}", "width": 800 - 50 * i, "format": "png"} for i in range(4)]
    resizes = [
        asyncio.create_task(
            resizer.call({"source": source, "output": f"busy/{i}", "variants": variants})
        )
        for i in range(8)
    ]
    async with image_server({"ping": b"pong"}) as base, aiohttp.ClientSession() as session:
        # Had a resize run on the event loop, every one of them would have finished
        # before this request got its answer.
        async with session.get(f"{base}/files/ping") as response:
            assert await response.read() == b"pong"
        assert not all(task.done() for task in resizes)
    outputs = await asyncio.gather(*resizes)
    assert all(len(output["variants"]) == 4 for output in outputs)


async def test_a_crashed_pool_process_is_replaced(
    resizer: StartedHandler, dirs: tuple[Path, Path]
) -> None:
    source = put(dirs, "crash.png", encode(halves((40, 40), RED, BLUE), "PNG"))
    params = {"source": source, "output": "crash/x", "variants": [{"name": "v", "width": 10}]}
    await resizer.call(params)
    pool_processes = multiprocessing.active_children()
    assert pool_processes
    for process in pool_processes:
        assert process.pid is not None
        # Other tests' pools may still be winding down: one may be gone already.
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.join()
    with pytest.raises(RetryableError) as caught:
        await resizer.call(params)
    assert caught.value.code == Code.UNAVAILABLE
    assert (await resizer.call(params))["variants"][0]["width"] == 10  # a fresh pool


_OWNER_SCRIPT = """
import asyncio, multiprocessing, sys
from batchd.core.config import Settings
from batchd.worker.handlers.image import image_resize_handler
from batchd.testing import open_handler

async def main(source_dir, output_dir):
    settings = Settings.of(
        image_processes=2, image_input_dir=source_dir, image_output_dir=output_dir
    )
    async with open_handler(image_resize_handler(), settings=settings) as started:
        params = {"source": "owner.png", "output": "o", "variants": [{"name": "v", "width": 5}]}
        await started.call(params)
        print(*(p.pid for p in multiprocessing.active_children()), flush=True)
        await asyncio.Event().wait()  # until killed

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.chaos
@pytest.mark.slow
async def test_pool_processes_end_with_a_killed_worker(tmp_path: Path) -> None:
    # A SIGKILLed worker shuts nothing down: its pool processes (children of the
    # forkserver, not of the worker) must notice and exit on their own.
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "owner.png").write_bytes(encode(halves((20, 20), RED, BLUE), "PNG"))
    owner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _OWNER_SCRIPT,
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert owner.stdout is not None
        line = await asyncio.wait_for(owner.stdout.readline(), 60)
        pids = [int(pid) for pid in line.split()]
        assert len(pids) >= 2  # the pool's two processes
        assert all(_alive(pid) for pid in pids)
    finally:
        owner.kill()
        await owner.wait()
    deadline = time.monotonic() + 15
    # Other processes' exits: there is nothing to wait on but their pids.
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    assert not [pid for pid in pids if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose; its parent (the forkserver) may not reap it yet.
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


# --- end to end -------------------------------------------------------------------------

E2E_IMAGES = 2_000
E2E_CORRUPT = 20
E2E_VARIANTS = [
    {"name": "thumb", "width": 64, "height": 64, "fit": "cover", "format": "webp"},
    {"name": "small", "width": 160},
]
DEFAULT_EXTENSION = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "png"}


@pytest.fixture
def e2e_prefix(tmp_path: Path) -> str:
    # Its own key prefix keeps this test's queue apart from other tests on the shared
    # private Redis.
    return f"image-{tmp_path.name}:"


@pytest.fixture
async def e2e_server(redis_url: str, e2e_prefix: str) -> AsyncIterator[BatchdServer]:
    settings = Settings(redis_url=redis_url, host="127.0.0.1", key_prefix=e2e_prefix)
    running = await start_server(settings, port=0, metrics_port=0)
    yield running
    await running.stop(grace=0)


@pytest.fixture
def e2e_worker(
    redis_url: str, e2e_prefix: str, tmp_path: Path
) -> Iterator[tuple[ServiceProcess, Path, Path]]:
    input_dir, output_dir = tmp_path / "in", tmp_path / "out"
    input_dir.mkdir()
    env = {
        "BATCHD_REDIS_URL": redis_url,
        "BATCHD_KEY_PREFIX": e2e_prefix,
        "BATCHD_IMAGE_PROCESSES": "2",
        "BATCHD_IMAGE_INPUT_DIR": str(input_dir),
        "BATCHD_IMAGE_OUTPUT_DIR": str(output_dir),
        "BATCHD_WORKER_CONCURRENCY": "32",
        "BATCHD_LOG_LEVEL": "warning",
        "BATCHD_EGRESS_ALLOW": "127.0.0.1",
    }
    if not any(handler.name == "image.resize" for handler in builtin_handlers()):
        env["BATCHD_HANDLERS"] = "batchd.worker.handlers.image:image_resize_handler"
    process = worker(env, tmp_path / "worker.log").start()
    try:
        yield process, input_dir, output_dir
    finally:
        process.stop()


def small_size(width: int, height: int) -> tuple[int, int]:
    """The `small` variant: at most 160 wide, aspect kept, never enlarged."""
    if width <= 160:
        return width, height
    return 160, max(1, round(height * 160 / width))


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_2000_images_through_the_service(
    e2e_server: BatchdServer, e2e_worker: tuple[ServiceProcess, Path, Path]
) -> None:
    process, input_dir, output_dir = e2e_worker
    started = time.perf_counter()
    images = await asyncio.to_thread(
        generate_images, input_dir, E2E_IMAGES, E2E_CORRUPT, sides=(40, 320)
    )
    generated = time.perf_counter()
    items = [
        (
            f"i{i}",
            {"source": image.name, "output": f"u{i % 50}/{image.name}", "variants": E2E_VARIANTS},
        )
        for i, image in enumerate(images)
    ]
    async with AsyncClient(f"127.0.0.1:{e2e_server.port}") as client:
        await wait_for_handler(client, "image.resize")
        submitted = await client.upload("image.resize", items)
        batch_id = submitted.batch.batch_id
        last = None
        async for progress in client.watch(batch_id, min_interval=0.25):
            last = progress
        ran = time.perf_counter()
        assert last is not None, process.log_tail()
        assert last.state == BatchState.COMPLETED
        outcomes = {o.custom_id: o async for o in client.items(batch_id, page_size=1000)}

    states = Counter(o.state for o in outcomes.values())
    assert states == {ItemState.SUCCEEDED: E2E_IMAGES - E2E_CORRUPT, ItemState.FAILED: E2E_CORRUPT}
    for i, image in enumerate(images):
        outcome = outcomes[f"i{i}"]
        if image.corrupt:
            assert outcome.state == ItemState.FAILED, image
            assert outcome.attempts == 1
            assert outcome.error is not None
            assert outcome.error.code == grpc.StatusCode.INVALID_ARGUMENT
            assert outcome.error.message.startswith(
                ("cannot identify image file", "truncated image", "corrupt image")
            ), outcome.error.message
            continue
        assert outcome.state == ItemState.SUCCEEDED, (image, outcome.error)
        assert outcome.output is not None
        source = outcome.output["source"]
        assert (source["width"], source["height"]) == (image.width, image.height)
        thumb, small = outcome.output["variants"]
        prefix = f"u{i % 50}/{image.name}"
        assert thumb["path"] == f"{prefix}.thumb.webp"
        assert small["path"] == f"{prefix}.small.{DEFAULT_EXTENSION[image.format]}"
        with Image.open(output_dir / thumb["path"]) as opened_thumb:
            assert opened_thumb.size == (64, 64)
        with Image.open(output_dir / small["path"]) as opened_small:
            assert opened_small.size == small_size(image.width, image.height)
            assert (small["width"], small["height"]) == opened_small.size
    checked = time.perf_counter()
    print(
        f"\nimage.resize e2e: generated {E2E_IMAGES} in {generated - started:.1f}s, "
        f"ran in {ran - generated:.1f}s ({E2E_IMAGES / (ran - generated):.0f} items/s), "
        f"checked in {checked - ran:.1f}s"
    )


@pytest.mark.slow
async def test_an_image_over_the_memory_limit_fails_its_item_and_the_pool_goes_on(
    tmp_path: Path,
) -> None:
    # 6,000 x 6,000 decodes to 108 MB of RGB: over a process capped at 400 MiB of address
    # space once its variants are made, though its PNG is a few hundred KB.
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.png").write_bytes(encode(Image.new("RGB", (6000, 6000), RED), "PNG"))
    (tmp_path / "in" / "small.png").write_bytes(encode(halves((200, 100), RED, BLUE), "PNG"))
    settings = Settings.of(
        image_processes=1,
        image_max_pixels=50_000_000,
        image_memory_limit=400 * 1024 * 1024,
        image_input_dir=str(tmp_path / "in"),
        image_output_dir=str(tmp_path / "out"),
    )
    variants = [{"name": f"v{n}", "width": 5000 - n, "height": 5000 - n} for n in range(4)]
    async with open_handler(image_resize_handler(), settings=settings) as started:
        with pytest.raises(PermanentError) as caught:
            await started.call({"source": "big.png", "output": "big", "variants": variants})
        assert caught.value.code == Code.RESOURCE_EXHAUSTED
        assert "BATCHD_IMAGE_MEMORY_LIMIT" in caught.value.message
        small = [{"name": "thumb", "width": 50}]
        done = await started.call({"source": "small.png", "output": "small", "variants": small})
        assert done["variants"][0]["width"] == 50  # the same pool process, still serving


async def test_local_paths_are_refused_without_an_input_directory(tmp_path: Path) -> None:
    settings = Settings.of(image_output_dir=str(tmp_path / "out"))
    async with open_handler(image_resize_handler(), settings=settings) as started:
        with pytest.raises(PermanentError) as caught:
            await started.call(
                {"source": ".env", "output": "x", "variants": [{"name": "a", "width": 10}]}
            )
    assert caught.value.code == Code.PERMISSION_DENIED
    assert "BATCHD_IMAGE_INPUT_DIR" in caught.value.message


@pytest.mark.parametrize(
    ("inputs", "outputs"), [(".", ".data/images"), ("shared", "shared"), ("a/out", "a")]
)
async def test_overlapping_input_and_output_directories_are_refused(
    tmp_path: Path, inputs: str, outputs: str
) -> None:
    settings = Settings.of(
        image_input_dir=str(tmp_path / inputs), image_output_dir=str(tmp_path / outputs)
    )
    with pytest.raises(SettingError, match="overlap"):
        async with open_handler(image_resize_handler(), settings=settings):
            pass
