"""Downloader against the simulator's file host over real loopback HTTP.

Results come from the real client (submit, poll), images from ``/files/...``; the
simulator's ``/_sim/tasks`` says which digests it served completely, and its stats count
any download that carried credentials (there must be none).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from batchgen.api.responses import TaskInfo
from batchgen.errors import (
    DownloadTooLargeError,
    ResultExpiredError,
    TruncatedDownloadError,
    UnsafeURLError,
)
from batchgen.output.fetch import PART_SUFFIX, Downloader, SavedImage
from batchgen.sim import SimConfig, SimServer, running_simulator
from tests.conftest import SimFactory
from tests.test_client_sim import NOW, client_for, playground_for, sim_json

pytestmark = pytest.mark.anyio

SCALE = 0.05


def scaled(width: int, height: int) -> tuple[int, int]:
    """A full-size image's sides as the simulator renders them at SCALE (8 px minimum)."""
    return max(8, round(width * SCALE)), max(8, round(height * SCALE))


@pytest.fixture
async def sim(sim_factory: SimFactory) -> AsyncIterator[SimServer]:
    """A simulator with small images (5 %), seed 0, latency 0.05 s."""
    async with sim_factory(SimConfig(latency=0.05, seed=0, image_scale=SCALE)) as server:
        yield server


async def finished_task(sim: SimServer, body: dict[str, Any], *, draw: bool = False) -> TaskInfo:
    """Submit an instant task (generate, or draw/completions) and poll its final state."""
    async with client_for(sim) as client:
        body = {**body, "prompt": f"{body.get('prompt', 'p')} {NOW}"}
        if draw:
            submission = await client.submit_draw_completions(body)
        else:
            submission = await client.generate_async(body)
        info = await client.get_result(submission.task_id)
    assert info.succeeded, info
    return info


async def served(sim: SimServer, task_id: str) -> list[str]:
    """The digests the simulator served completely for ``task_id``."""
    rows = await sim_json(sim, "/_sim/tasks")
    (row,) = [r for r in rows if r["id"] == task_id]
    digests: list[str] = row["served_sha256"]
    return digests


def leftovers(folder: Path) -> list[str]:
    """Every file name in ``folder`` (downloads leave nothing but finished images)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def assert_no_credentials_sent(sim: SimServer) -> None:
    """The simulator saw no download with an Authorization header or a cookie."""
    assert (await sim_json(sim, "/_sim/stats"))["downloads_with_credentials"] == 0


# --- saved images ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "aspect", "size", "full"),
    [
        ("nano-banana-pro", "16:9", "2K", (2048, 1152)),
        ("nano-banana-2", "1:4", "4K", (1024, 4096)),
        ("nano-banana-2", "21:9", "1K", (1024, 440)),
        ("nano-banana", "4:3", "2K", (1024, 768)),  # the family ignores imageSize: 1K
        ("nano-banana-fast", "auto", "1K", (1024, 1024)),
    ],
)
async def test_result_image_saved_with_served_digest_and_size(
    sim: SimServer, tmp_path: Path, model: str, aspect: str, size: str, full: tuple[int, int]
) -> None:
    """A result is saved whole: sha256 as served, sides per aspect ratio and size, no .part."""
    info = await finished_task(
        sim, {"model": model, "prompt": "p", "aspectRatio": aspect, "imageSize": size}
    )
    dest = tmp_path / "out" / "image.png"
    async with Downloader(allow_local=True) as downloader:
        saved = await downloader.fetch(info.urls[0], dest)
    assert isinstance(saved, SavedImage)
    data = dest.read_bytes()
    assert saved.path == dest
    assert saved.size == len(data)
    assert saved.sha256 == hashlib.sha256(data).hexdigest()
    assert await served(sim, info.id) == [saved.sha256]
    assert (saved.width, saved.height) == scaled(*full)
    assert saved.format == "PNG"
    with Image.open(dest) as image:
        assert image.size == scaled(*full)
    assert leftovers(dest.parent) == ["image.png"]
    await assert_no_credentials_sent(sim)


async def test_every_variant_of_a_draw_task_downloads(sim: SimServer, tmp_path: Path) -> None:
    """Both variants of a gpt-image-2 pixel-size task save as distinct images of that size."""
    info = await finished_task(
        sim, {"model": "gpt-image-2", "aspectRatio": "1536x1024", "variants": 2}, draw=True
    )
    async with Downloader(allow_local=True) as downloader:
        saved = [
            await downloader.fetch(url, tmp_path / f"{n}.png") for n, url in enumerate(info.urls)
        ]
    assert len(saved) == 2
    assert saved[0].sha256 != saved[1].sha256
    assert await served(sim, info.id) == [s.sha256 for s in saved]
    assert {(s.width, s.height) for s in saved} == {scaled(1536, 1024)}
    await assert_no_credentials_sent(sim)


async def test_inline_b64_image_saved_with_served_digest(sim: SimServer, tmp_path: Path) -> None:
    """A b64_json image from images/generations saves with the digest the simulator served."""
    async with client_for(sim) as client:
        result = await client.images_generations(
            {"model": "gpt-image-2", "prompt": f"p {NOW}", "response_format": "b64_json"}
        )
    (image,) = result.images
    assert image.data is not None
    async with Downloader(allow_local=True) as downloader:
        saved = downloader.save_bytes(image.data, tmp_path / "inline.png")
    (row,) = await sim_json(sim, "/_sim/tasks")
    assert row["served_sha256"] == [saved.sha256]
    assert (saved.width, saved.height) == scaled(1024, 1024)
    assert leftovers(tmp_path) == ["inline.png"]


async def test_same_origin_redirect_is_followed(sim: SimServer, tmp_path: Path) -> None:
    """A redirect that stays on the result host is followed and the image saved."""
    sim.config.result_url_template = "{origin}/_sim/redirect?to={origin}/files/{file}"
    info = await finished_task(sim, {"model": "nano-banana", "prompt": "p"})
    assert "/_sim/redirect?to=" in info.urls[0]
    async with Downloader(allow_local=True) as downloader:
        saved = await downloader.fetch(info.urls[0], tmp_path / "r.png")
    assert await served(sim, info.id) == [saved.sha256]


# --- failures leave nothing behind ---------------------------------------------------------


async def test_truncated_download_leaves_no_file(sim: SimServer, tmp_path: Path) -> None:
    """A body cut at half its declared length is TruncatedDownloadError; no file, no .part."""
    info = await finished_task(sim, {"model": "nano-banana", "prompt": "p"})
    sim.config.truncate_rate = 1.0
    dest = tmp_path / "t.png"
    async with Downloader(allow_local=True) as downloader:
        with pytest.raises(TruncatedDownloadError) as caught:
            await downloader.fetch(info.urls[0], dest)
    assert caught.value.retryable
    assert caught.value.url == info.urls[0]
    assert leftovers(tmp_path) == []
    assert not any(name.endswith(PART_SUFFIX) for name in leftovers(tmp_path))
    stats = await sim_json(sim, "/_sim/stats")
    assert stats["downloads_truncated"] == 1
    assert stats["downloads"] == 0
    assert await served(sim, info.id) == []
    await assert_no_credentials_sent(sim)


async def test_oversize_stream_stops_at_the_cap(sim: SimServer, tmp_path: Path) -> None:
    """A body with no length that runs past max_bytes is DownloadTooLargeError; no file."""
    info = await finished_task(sim, {"model": "nano-banana", "prompt": "p"})
    sim.config.oversize_rate = 1.0
    async with Downloader(allow_local=True, max_bytes=256 * 1024) as downloader:
        with pytest.raises(DownloadTooLargeError) as caught:
            await downloader.fetch(info.urls[0], tmp_path / "big.png")
    assert not caught.value.retryable
    assert leftovers(tmp_path) == []
    assert (await sim_json(sim, "/_sim/stats"))["downloads_oversize"] == 1
    await assert_no_credentials_sent(sim)


async def test_declared_length_over_the_cap(sim: SimServer, tmp_path: Path) -> None:
    """An image whose Content-Length already exceeds max_bytes is refused before its body."""
    info = await finished_task(sim, {"model": "nano-banana", "prompt": "p"})
    async with Downloader(allow_local=True, max_bytes=64) as downloader:
        with pytest.raises(DownloadTooLargeError, match="exceeds the cap of 64"):
            await downloader.fetch(info.urls[0], tmp_path / "big.png")
    assert leftovers(tmp_path) == []


async def test_expired_url_with_an_injected_clock(tmp_path: Path) -> None:
    """A result URL works until url_ttl after the task ended, then is ResultExpiredError."""
    now = [1000.0]
    config = SimConfig(latency=0.05, seed=0, image_scale=SCALE, url_ttl=60)
    async with (
        running_simulator(config, clock=lambda: now[0]) as sim,
        Downloader(allow_local=True) as downloader,
    ):
        info = await finished_task(sim, {"model": "nano-banana", "prompt": "p"})
        now[0] += 59
        await downloader.fetch(info.urls[0], tmp_path / "early.png")
        now[0] += 2
        with pytest.raises(ResultExpiredError) as caught:
            await downloader.fetch(info.urls[0], tmp_path / "late.png")
        stats = await sim_json(sim, "/_sim/stats")
    assert not caught.value.retryable
    assert caught.value.code == "url_expired"
    assert leftovers(tmp_path) == ["early.png"]
    assert stats["downloads"] == 1
    assert stats["downloads_expired"] == 1
    assert stats["downloads_with_credentials"] == 0


# --- URL policy -------------------------------------------------------------------------------


async def test_file_scheme_result_url_is_refused(sim: SimServer, tmp_path: Path) -> None:
    """A ``file://`` result URL is UnsafeURLError, and nothing is read or written."""
    sim.config.result_url_template = "file:///etc/{file}"
    info = await finished_task(sim, {"model": "nano-banana", "prompt": "p"})
    assert info.urls[0] == f"file:///etc/{info.id}-0.png"
    async with Downloader(allow_local=True) as downloader:
        with pytest.raises(UnsafeURLError, match="scheme 'file'"):
            await downloader.fetch(info.urls[0], tmp_path / "x.png")
    assert leftovers(tmp_path) == []


async def test_redirect_to_another_host_is_refused(sim: SimServer, tmp_path: Path) -> None:
    """A result URL redirecting to a private address elsewhere is UnsafeURLError, not followed."""
    sim.config.result_url_template = "{origin}/_sim/redirect?to=http://10.0.0.1/{file}"
    info = await finished_task(sim, {"model": "nano-banana", "prompt": "p"})
    async with Downloader(allow_local=True) as downloader:
        with pytest.raises(UnsafeURLError, match=r"redirect .* to another host \(10\.0\.0\.1\)"):
            await downloader.fetch(info.urls[0], tmp_path / "x.png")
    assert leftovers(tmp_path) == []
    routes = (await sim_json(sim, "/_sim/stats"))["requests_by_route"]
    assert routes["GET /_sim/redirect"] == 1
    await assert_no_credentials_sent(sim)


async def test_loopback_result_url_refused_without_allow_local(
    sim: SimServer, tmp_path: Path
) -> None:
    """With allow_local False a loopback result URL is UnsafeURLError before any request."""
    info = await finished_task(sim, {"model": "nano-banana", "prompt": "p"})
    async with Downloader() as downloader:
        with pytest.raises(UnsafeURLError, match=r"private address 127\.0\.0\.1"):
            await downloader.fetch(info.urls[0], tmp_path / "x.png")
    routes = (await sim_json(sim, "/_sim/stats"))["requests_by_route"]
    assert "GET /files/*" not in routes
    assert leftovers(tmp_path) == []


async def test_downloads_never_carry_credentials(sim: SimServer, tmp_path: Path) -> None:
    """Downloads beside a keyed and a playground client send neither key nor cookie."""
    async with client_for(sim) as keyed, playground_for(sim) as playground:
        a = await keyed.generate_async({"model": "nano-banana", "prompt": f"a {NOW}"})
        b = await playground.generate_async({"model": "nano-banana", "prompt": f"b {NOW}"})
        urls = [
            *(await keyed.get_result(a.task_id)).urls,
            *(await playground.get_result(b.task_id)).urls,
        ]
        async with Downloader(allow_local=True) as downloader:
            for n, url in enumerate(urls * 2):
                await downloader.fetch(url, tmp_path / f"{n}.png")
    stats = await sim_json(sim, "/_sim/stats")
    assert stats["downloads"] == 4
    assert stats["downloads_with_credentials"] == 0
