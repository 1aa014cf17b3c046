"""Unit tests for batchgen.output.fetch over httpx.MockTransport: safety, atomicity, checks."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
import pytest
from PIL import Image

from batchgen.errors import (
    DownloadError,
    DownloadTooLargeError,
    NotAnImageError,
    ResultExpiredError,
    TruncatedDownloadError,
    UnsafeURLError,
)
from batchgen.output.fetch import PART_SUFFIX, Downloader, SavedImage, is_local_host

Handler = Callable[[httpx.Request], httpx.Response]
Resolver = Callable[[str], Awaitable[list[str]]]

URL = "https://cdn.example.com/results/img.png"
PUBLIC_IP = "93.184.216.34"


def make_png(width: int = 4, height: int = 3, *, noise: bool = False) -> bytes:
    """A valid PNG; with ``noise`` it barely compresses, so its size tracks its area."""
    if noise:
        pixels = random.Random(0).randbytes(width * height * 3)
        image = Image.frombytes("RGB", (width, height), pixels)
    else:
        image = Image.new("RGB", (width, height), (200, 30, 90))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


PNG = make_png()
BIG_PNG = make_png(64, 64, noise=True)


async def public(host: str) -> list[str]:
    """A resolver that puts every name on a public address."""
    return [PUBLIC_IP]


async def private(host: str) -> list[str]:
    """A resolver that puts every name on a private 10.x address."""
    return ["10.1.2.3"]


async def mixed(host: str) -> list[str]:
    """A resolver answering one public and one loopback address."""
    return [PUBLIC_IP, "127.0.0.1"]


def body_response(
    data: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> httpx.Response:
    """A response that streams ``data`` (not pre-read) with its Content-Length."""
    return httpx.Response(
        status,
        headers={"content-length": str(len(data)), "content-type": "image/png", **(headers or {})},
        stream=httpx.ByteStream(data),
    )


def chunked_response(chunks: list[bytes], headers: dict[str, str] | None = None) -> httpx.Response:
    """A response streamed in ``chunks`` without a Content-Length."""

    async def body() -> AsyncIterator[bytes]:
        for piece in chunks:
            yield piece

    return httpx.Response(200, headers=headers, content=body())


def redirect(location: str, status: int = 302) -> httpx.Response:
    """A redirect to ``location``."""
    return httpx.Response(status, headers={"location": location})


@dataclass
class Recorder:
    """A MockTransport handler that records requests and answers by path."""

    answer: Handler
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)


def serve(data: bytes = PNG) -> Recorder:
    """A recorder serving ``data`` for every URL."""
    return Recorder(lambda request: body_response(data))


def downloader(
    handler: Handler,
    *,
    allow_local: bool = False,
    resolve: Resolver = public,
    max_bytes: int = 1 << 20,
) -> Downloader:
    """A Downloader over ``handler``."""
    return Downloader(
        transport=httpx.MockTransport(handler),
        allow_local=allow_local,
        resolve=resolve,
        max_bytes=max_bytes,
    )


def leftovers(folder: Path) -> list[str]:
    """Names of partial files left in ``folder`` (hidden ones included)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(PART_SUFFIX))


# --- success ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_png_saved_with_metadata(tmp_path: Path) -> None:
    """A PNG is saved at dest (parents created) with its size, sha256, dimensions and format."""
    dest = tmp_path / "out" / "job" / "img.png"
    rec = serve()
    async with downloader(rec) as dl:
        saved = await dl.fetch(URL, dest)
    assert saved == SavedImage(dest, len(PNG), hashlib.sha256(PNG).hexdigest(), 4, 3, "PNG")
    assert dest.read_bytes() == PNG
    assert sorted(p.name for p in dest.parent.iterdir()) == ["img.png"]
    assert [str(r.url) for r in rec.requests] == [URL]


@pytest.mark.anyio
async def test_file_appears_only_when_complete(tmp_path: Path) -> None:
    """While the body streams, dest is absent and the bytes go to a .part file in the folder."""
    dest = tmp_path / "img.png"
    seen: list[tuple[bool, list[str]]] = []

    async def body() -> AsyncIterator[bytes]:
        half = len(BIG_PNG) // 2
        yield BIG_PNG[:half]
        seen.append((dest.exists(), leftovers(tmp_path)))
        yield BIG_PNG[half:]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-length": str(len(BIG_PNG))}, content=body())

    async with downloader(handler) as dl:
        saved = await dl.fetch(URL, dest)
    assert len(seen) == 1
    exists_midway, parts_midway = seen[0]
    assert not exists_midway
    assert len(parts_midway) == 1
    assert parts_midway[0].startswith(".bg-")  # short: the final name may use 255 bytes
    assert dest.read_bytes() == BIG_PNG
    assert saved.size == len(BIG_PNG)
    assert leftovers(tmp_path) == []


@pytest.mark.anyio
async def test_same_host_redirect_followed(tmp_path: Path) -> None:
    """A redirect to another path on the same host is followed."""
    rec = Recorder(
        lambda r: redirect("/final/img.png") if r.url.path == "/start" else body_response(PNG)
    )
    async with downloader(rec) as dl:
        saved = await dl.fetch("https://cdn.example.com/start", tmp_path / "a.png")
    assert saved.sha256 == hashlib.sha256(PNG).hexdigest()
    assert [str(r.url) for r in rec.requests] == [
        "https://cdn.example.com/start",
        "https://cdn.example.com/final/img.png",
    ]


@pytest.mark.anyio
async def test_http_to_https_upgrade_followed(tmp_path: Path) -> None:
    """A redirect from http to https on the same host is followed."""
    rec = Recorder(
        lambda r: (
            redirect("https://cdn.example.com/x.png")
            if r.url.scheme == "http"
            else body_response(PNG)
        )
    )
    async with downloader(rec) as dl:
        await dl.fetch("http://cdn.example.com/x.png", tmp_path / "a.png")
    assert [r.url.scheme for r in rec.requests] == ["http", "https"]


@pytest.mark.anyio
async def test_local_allowed_for_the_simulator(tmp_path: Path) -> None:
    """allow_local=True fetches from loopback (the simulator) without resolving."""

    async def fail(host: str) -> list[str]:
        raise AssertionError("resolver must not be called")

    async with downloader(serve(), allow_local=True, resolve=fail) as dl:
        saved = await dl.fetch("http://127.0.0.1:8765/files/x.png", tmp_path / "x.png")
    assert saved.width == 4


def cookie_setter(request: httpx.Request) -> httpx.Response:
    """Redirect /start to /img.png on the same host; every answer sets a cookie."""
    response = redirect("/img.png") if request.url.path == "/start" else body_response(PNG)
    response.headers["set-cookie"] = "sid=tracker; Path=/"
    return response


@pytest.mark.anyio
async def test_no_authorization_sent(tmp_path: Path) -> None:
    """No download request carries an Authorization header, redirects included."""
    rec = Recorder(cookie_setter)
    async with downloader(rec) as dl:
        await dl.fetch("https://cdn.example.com/start", tmp_path / "a.png")
        await dl.fetch("https://cdn.example.com/start", tmp_path / "b.png")
    assert len(rec.requests) == 4
    assert all("authorization" not in r.headers for r in rec.requests)
    assert "cookie" not in rec.requests[0].headers


@pytest.mark.anyio
async def test_no_cookie_after_set_cookie(tmp_path: Path) -> None:
    """A cookie set by a result host is never sent back, on a redirect or a later download."""
    rec = Recorder(cookie_setter)
    async with downloader(rec) as dl:
        await dl.fetch("https://cdn.example.com/start", tmp_path / "a.png")
        await dl.fetch("https://cdn.example.com/start", tmp_path / "b.png")
    assert len(rec.requests) == 4
    assert all("cookie" not in r.headers for r in rec.requests)


def test_save_bytes(tmp_path: Path) -> None:
    """Inline b64 bytes are saved with the same metadata and no leftover."""
    dest = tmp_path / "inline" / "x.png"
    saved = Downloader().save_bytes(PNG, dest)
    assert saved == SavedImage(dest, len(PNG), hashlib.sha256(PNG).hexdigest(), 4, 3, "PNG")
    assert dest.read_bytes() == PNG
    assert leftovers(dest.parent) == []


# --- failures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailCase:
    """One download that must fail with ``error`` and leave nothing behind."""

    url: str
    handler: Handler
    error: type[DownloadError]
    resolve: Resolver = public
    max_bytes: int = 1 << 20
    requests: int | None = None


def refuse_all(request: httpx.Request) -> httpx.Response:
    """A handler that must never be reached."""
    raise AssertionError(f"unexpected request to {request.url}")


def status(code: int) -> Handler:
    """A handler answering ``code`` with a small body."""
    return lambda request: body_response(b"gone", status=code)


def declared_too_large(request: httpx.Request) -> httpx.Response:
    """A response declaring a length above the cap."""

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 100

    return httpx.Response(200, headers={"content-length": str(10 * 1024 * 1024)}, content=body())


def cut_short(request: httpx.Request) -> httpx.Response:
    """A body shorter than its declared Content-Length."""
    return httpx.Response(
        200, headers={"content-length": str(len(PNG) + 500)}, stream=httpx.ByteStream(PNG)
    )


def dies_midway(request: httpx.Request) -> httpx.Response:
    """A body whose connection drops after the first chunk."""

    async def body() -> AsyncIterator[bytes]:
        yield PNG[:20]
        raise httpx.ReadError("connection reset")

    return httpx.Response(200, headers={"content-length": str(len(PNG))}, content=body())


def raising(exc_type: type[httpx.TransportError]) -> Handler:
    """A handler failing at the transport."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("nope", request=request)

    return handler


def hop(request: httpx.Request) -> httpx.Response:
    """Redirect forever on the same host."""
    n = int(request.url.path.strip("/") or 0)
    return redirect(f"/{n + 1}")


def redirect_to(location: str) -> Handler:
    """A handler redirecting everything to ``location``."""
    return lambda request: redirect(location)


FAIL_CASES: dict[str, FailCase] = {
    "file-scheme": FailCase("file:///etc/passwd", refuse_all, UnsafeURLError, requests=0),
    "ftp-scheme": FailCase("ftp://cdn.example.com/x.png", refuse_all, UnsafeURLError, requests=0),
    "no-scheme": FailCase("cdn.example.com/x.png", refuse_all, UnsafeURLError, requests=0),
    "userinfo": FailCase(
        "https://user:pass@cdn.example.com/x.png", refuse_all, UnsafeURLError, requests=0
    ),
    "loopback-ip": FailCase("http://127.0.0.1/x.png", refuse_all, UnsafeURLError, requests=0),
    "localhost": FailCase("http://localhost:8000/x.png", refuse_all, UnsafeURLError, requests=0),
    "ipv6-loopback": FailCase("http://[::1]/x.png", refuse_all, UnsafeURLError, requests=0),
    "private-10": FailCase("http://10.0.0.5/x.png", refuse_all, UnsafeURLError, requests=0),
    "private-192": FailCase("http://192.168.1.20/x.png", refuse_all, UnsafeURLError, requests=0),
    "link-local-metadata": FailCase(
        "http://169.254.169.254/latest/meta-data", refuse_all, UnsafeURLError, requests=0
    ),
    "name-resolving-to-10": FailCase(URL, refuse_all, UnsafeURLError, resolve=private, requests=0),
    "name-resolving-to-loopback-too": FailCase(
        URL, refuse_all, UnsafeURLError, resolve=mixed, requests=0
    ),
    "redirect-other-host": FailCase(
        URL, redirect_to("https://evil.example.net/x.png"), UnsafeURLError, requests=1
    ),
    "redirect-to-loopback": FailCase(
        URL, redirect_to("http://127.0.0.1/x.png"), UnsafeURLError, requests=1
    ),
    "redirect-ftp": FailCase(
        URL, redirect_to("ftp://cdn.example.com/x.png"), UnsafeURLError, requests=1
    ),
    "redirect-file": FailCase(URL, redirect_to("file:///etc/passwd"), UnsafeURLError, requests=1),
    "redirect-loop": FailCase("https://cdn.example.com/0", hop, UnsafeURLError, requests=6),
    "http-404": FailCase(URL, status(404), ResultExpiredError, requests=1),
    "http-410": FailCase(URL, status(410), ResultExpiredError, requests=1),
    "http-403": FailCase(URL, status(403), ResultExpiredError, requests=1),
    "http-500": FailCase(URL, status(500), DownloadError, requests=1),
    "declared-too-large": FailCase(URL, declared_too_large, DownloadTooLargeError, requests=1),
    "streamed-too-large": FailCase(
        URL,
        lambda r: chunked_response([BIG_PNG[:3000], BIG_PNG[3000:6000], BIG_PNG[6000:]]),
        DownloadTooLargeError,
        max_bytes=4096,
    ),
    "truncated": FailCase(URL, cut_short, TruncatedDownloadError),
    "connection-dropped": FailCase(URL, dies_midway, TruncatedDownloadError),
    "connect-error": FailCase(URL, raising(httpx.ConnectError), DownloadError),
    "read-timeout": FailCase(URL, raising(httpx.ReadTimeout), DownloadError),
    "not-an-image": FailCase(
        URL, lambda r: body_response(b"<html>expired</html>"), NotAnImageError
    ),
    "png-magic-garbage": FailCase(
        URL, lambda r: body_response(PNG[:16] + b"\x00" * 40), NotAnImageError
    ),
    "empty-body": FailCase(URL, lambda r: body_response(b""), NotAnImageError),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", FAIL_CASES.values(), ids=FAIL_CASES.keys())
async def test_failures_leave_nothing(case: FailCase, tmp_path: Path) -> None:
    """Each bad URL or answer raises its error and leaves neither dest nor a .part file."""
    folder = tmp_path / "out"
    dest = folder / "img.png"
    rec = Recorder(case.handler)
    async with downloader(rec, resolve=case.resolve, max_bytes=case.max_bytes) as dl:
        with pytest.raises(DownloadError) as info:
            await dl.fetch(case.url, dest)
    assert type(info.value) is case.error
    assert not dest.exists()
    assert leftovers(folder) == []
    if folder.exists():
        assert list(folder.iterdir()) == []
    if case.requests is not None:
        assert len(rec.requests) == case.requests


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("code", "error", "retryable"),
    [
        (404, ResultExpiredError, False),
        (410, ResultExpiredError, False),
        (403, ResultExpiredError, False),
        (500, DownloadError, True),
        (429, DownloadError, True),
        (400, DownloadError, False),
    ],
)
async def test_status_retryability(
    code: int, error: type[DownloadError], retryable: bool, tmp_path: Path
) -> None:
    """Expired URLs are final; 5xx and 429 may be retried; other statuses may not."""
    async with downloader(status(code)) as dl:
        with pytest.raises(DownloadError) as info:
            await dl.fetch(URL, tmp_path / "x.png")
    assert type(info.value) is error
    assert info.value.retryable is retryable
    assert info.value.url == URL


@pytest.mark.anyio
async def test_declared_too_large_is_not_read(tmp_path: Path) -> None:
    """A Content-Length above the cap is refused before any body byte is read or written."""
    read: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        read.append(1)
        yield BIG_PNG

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-length": str(len(BIG_PNG))}, content=body())

    async with downloader(handler, max_bytes=len(BIG_PNG) - 1) as dl:
        with pytest.raises(DownloadTooLargeError, match="exceeds the cap"):
            await dl.fetch(URL, tmp_path / "x.png")
    assert read == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.anyio
async def test_failure_keeps_an_existing_file(tmp_path: Path) -> None:
    """A failed download never clobbers a file already at dest."""
    dest = tmp_path / "img.png"
    dest.write_bytes(PNG)
    async with downloader(lambda r: body_response(b"not an image")) as dl:
        with pytest.raises(NotAnImageError):
            await dl.fetch(URL, dest)
    assert dest.read_bytes() == PNG
    assert leftovers(tmp_path) == []


@pytest.mark.anyio
async def test_refused_url_hides_credentials() -> None:
    """Refusing a URL with user:pass does not repeat the password in the error text."""
    async with downloader(refuse_all) as dl:
        with pytest.raises(UnsafeURLError) as info:
            await dl.check_url("https://user:hunter2secret@cdn.example.com/x.png")
    assert "hunter2secret" not in str(info.value)
    assert "hunter2secret" not in repr(info.value)


@pytest.mark.anyio
async def test_gzip_encoded_image(tmp_path: Path) -> None:
    """An image served with Content-Encoding: gzip is saved decoded (or never requested so)."""
    packed = gzip.compress(PNG)
    async with downloader(
        lambda r: body_response(packed, headers={"content-encoding": "gzip"})
    ) as dl:
        saved = await dl.fetch(URL, tmp_path / "x.png")
    assert saved.sha256 == hashlib.sha256(PNG).hexdigest()


def test_save_bytes_not_an_image(tmp_path: Path) -> None:
    """Inline bytes that are not an image raise NotAnImageError and leave nothing."""
    dest = tmp_path / "x.png"
    with pytest.raises(NotAnImageError):
        Downloader().save_bytes(b"\x89PNG\r\n\x1a\ngarbage", dest)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_save_bytes_too_large(tmp_path: Path) -> None:
    """Inline bytes above the cap raise DownloadTooLargeError without writing."""
    dest = tmp_path / "x.png"
    with pytest.raises(DownloadTooLargeError):
        Downloader(max_bytes=len(PNG) - 1).save_bytes(PNG, dest)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("localhost", True),
        ("app.localhost", True),
        ("127.0.0.1", True),
        ("10.9.8.7", True),
        ("172.16.0.1", True),
        ("192.168.0.1", True),
        ("169.254.169.254", True),
        ("::1", True),
        ("[::1]", True),
        ("fd00::1", True),
        ("0.0.0.0", True),  # noqa: S104 - an address under test, nothing binds to it
        (PUBLIC_IP, False),
        ("cdn.example.com", False),
    ],
)
def test_is_local_host(host: str, local: bool) -> None:
    """Loopback, private, link-local and localhost names count as local; public ones do not."""
    assert is_local_host(host) is local
