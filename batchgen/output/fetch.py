"""Fetching result images safely, with a client that sends no credentials.

A result URL comes from the service, so it is treated as untrusted input: only http(s),
no redirect to another host or scheme, no private or loopback address unless the API
itself is local (the simulator), a size cap enforced while streaming, and the bytes
must decode as an image before they are renamed into place. A file is either complete
and verified at its final path, or absent: the partial file lives under a temporary
name in the same folder and is removed on any failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.cookiejar
import ipaddress
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urljoin, urlsplit, urlunsplit

import anyio
import httpx2 as httpx
from PIL import Image, UnidentifiedImageError

from batchgen.errors import (
    BatchgenError,
    DownloadError,
    DownloadTooLargeError,
    NotAnImageError,
    ResultExpiredError,
    TruncatedDownloadError,
    UnsafeURLError,
    redact,
)

__all__ = [
    "PART_SUFFIX",
    "Downloader",
    "SavedImage",
    "is_local_host",
    "part_path",
    "verify_image",
]

#: Suffix of in-progress files; anything ending in it is garbage after a crash.
PART_SUFFIX: Final = ".part"
_MAX_REDIRECTS: Final = 5
_CHUNK: Final = 256 * 1024
_IMAGE_MAGIC: Final = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"RIFF",  # WEBP: RIFF....WEBP, checked by Pillow
)


@dataclass(frozen=True, slots=True)
class SavedImage:
    """An image verified and renamed into place."""

    path: Path
    size: int
    sha256: str
    width: int
    height: int
    format: str


def is_local_host(host: str) -> bool:
    """Whether ``host`` is a literal loopback/private address or ``localhost``."""
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return not address.is_global


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Refuse every cookie, so no credential can ride along on a later download."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: object) -> bool:
        return False


def verify_image(path: Path) -> tuple[int, int, str]:
    """Check that ``path`` holds an image Pillow can read; return (width, height, format).

    Raises NotAnImageError otherwise.
    """
    with path.open("rb") as fh:
        head = fh.read(16)
    if not any(head.startswith(m) for m in _IMAGE_MAGIC):
        raise NotAnImageError(f"{path.name}: not an image (starts with {head[:8]!r})")
    try:
        with Image.open(path) as img:
            width, height = img.size
            fmt = img.format or "unknown"
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise NotAnImageError(f"{path.name}: image does not decode: {exc}") from None
    return width, height, fmt


class Downloader:
    """Downloads result images. Use as ``async with Downloader(...) as d:``.

    ``allow_local`` permits loopback and private addresses; pass ``True`` only when
    the API itself is local (the simulator), so a remote service cannot point
    batchgen at the user's own network. ``resolve`` is the name resolver (injectable
    for tests).
    """

    def __init__(
        self,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        timeout: float = 120.0,
        allow_local: bool = False,
        max_connections: int = 32,
        durable: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        resolve: Callable[[str], Awaitable[list[str]]] | None = None,
        part_tag: str = "",
    ) -> None:
        self.max_bytes = max_bytes
        #: Names this run's partial files (a shard's ``<i>-of-<n>``), so that its next
        #: start-up knows them from those of other shards writing the same tree.
        self.part_tag = part_tag
        self.allow_local = allow_local
        self.durable = durable
        # Connections are pinned to checked addresses; an injected transport (tests)
        # has no sockets to pin.
        self._pin = transport is None
        self._resolve = resolve or _resolve_host
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
            cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
            # Raw bytes are what the size cap and Content-Length check count.
            headers={"Accept-Encoding": "identity"},
            transport=transport,
            trust_env=False,
        )

    async def __aenter__(self) -> Downloader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # --- URL policy ---------------------------------------------------------------------

    async def check_url(self, url: str) -> list[str]:
        """Refuse a URL batchgen must not fetch; return the checked addresses of its host.

        The list is empty when private addresses are allowed (nothing to check) or the
        name does not resolve. Raises UnsafeURLError.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise UnsafeURLError(
                f"refused result URL with scheme {parts.scheme or 'none'!r}", url=url
            )
        if not parts.hostname:
            raise UnsafeURLError("refused result URL without a host", url=url)
        if parts.username or parts.password:
            raise UnsafeURLError("refused result URL carrying credentials", url=url)
        if self.allow_local:
            return []
        host = parts.hostname
        if is_local_host(host):
            raise UnsafeURLError(f"refused result URL on private address {host}", url=url)
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        addresses = [str(literal)] if literal is not None else await self._resolve(host)
        for address in addresses:
            if is_local_host(address):
                raise UnsafeURLError(
                    f"refused result URL: {host} resolves to private address {address}", url=url
                )
        return addresses

    def _pinned(self, url: str, addresses: list[str]) -> tuple[str, dict[str, str], dict[str, Any]]:
        """The request for ``url`` sent to an address that was checked.

        httpx would resolve the name again to connect, and a DNS answer that changed in
        between (rebinding) could lead it to a private address. So the request goes to
        the checked address, with the original ``Host`` header and TLS server name
        (httpcore's ``sni_hostname``), so virtual hosts and certificates still work.
        """
        if not self._pin or not addresses:
            return url, {}, {}
        parts = urlsplit(url)
        address = addresses[0]
        host = f"[{address}]" if ":" in address else address
        netloc = host + (f":{parts.port}" if parts.port else "")
        pinned = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        original = parts.hostname or ""
        headers = {"Host": original + (f":{parts.port}" if parts.port else "")}
        extensions: dict[str, Any] = {"sni_hostname": original} if parts.scheme == "https" else {}
        return pinned, headers, extensions

    # --- fetching -------------------------------------------------------------------------

    async def fetch(self, url: str, dest: Path) -> SavedImage:
        """Download ``url`` to ``dest`` (parents created), verified, atomically.

        Raises ResultExpiredError (404/410/403), UnsafeURLError, DownloadTooLargeError,
        TruncatedDownloadError, NotAnImageError, or DownloadError for other failures.
        """
        addresses = await self.check_url(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        current = url
        for _ in range(_MAX_REDIRECTS + 1):
            target_url, headers, extensions = self._pinned(current, addresses)
            try:
                async with self._http.stream(
                    "GET", target_url, headers=headers, extensions=extensions
                ) as response:
                    self._check_peer(response, current)
                    if response.is_redirect:
                        target = urljoin(current, response.headers.get("location", ""))
                        addresses = await self._check_redirect(current, target)
                        current = target
                        continue
                    return await self._save_response(response, current, dest)
            except BatchgenError:
                raise
            except httpx.HTTPError as exc:
                raise _translate(exc, url) from None
        raise UnsafeURLError(f"more than {_MAX_REDIRECTS} redirects", url=url)

    def _check_peer(self, response: httpx.Response, url: str) -> None:
        """Refuse an answer from a private address: the name was checked before the
        request, but httpx resolved it again to connect (DNS rebinding)."""
        if self.allow_local:
            return
        stream = response.extensions.get("network_stream")
        if stream is None:  # a transport that is not a socket (tests)
            return
        peer = stream.get_extra_info("server_addr")
        if peer and is_local_host(str(peer[0])):
            raise UnsafeURLError(
                f"refused result URL: connected to private address {peer[0]}", url=url
            )

    async def _check_redirect(self, source: str, target: str) -> list[str]:
        a, b = urlsplit(source), urlsplit(target)
        if b.scheme not in ("http", "https"):
            raise UnsafeURLError(f"refused redirect to scheme {b.scheme or 'none'!r}", url=source)
        if (a.hostname, a.port) != (b.hostname, b.port) and not (
            a.hostname == b.hostname and a.scheme == "http" and b.scheme == "https"
        ):
            raise UnsafeURLError(
                f"refused redirect from {a.hostname} to another host ({b.hostname})", url=source
            )
        return await self.check_url(target)

    async def _save_response(self, response: httpx.Response, url: str, dest: Path) -> SavedImage:
        status = response.status_code
        if status in (403, 404, 410):
            raise ResultExpiredError(f"result URL answered HTTP {status} (expired)", url=url)
        if status != 200:
            raise DownloadError(
                f"result URL answered HTTP {status}",
                url=url,
                retryable=status >= 500 or status == 429,
            )
        declared = response.headers.get("content-length")
        encoded = response.headers.get("content-encoding", "identity").lower() not in (
            "",
            "identity",
        )
        if encoded:
            # A server that compresses anyway: count and cap the decoded bytes (which
            # also stops a decompression bomb); the declared length is of the encoding.
            declared = None
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise DownloadTooLargeError(
                f"image of {int(declared):,} bytes exceeds the cap of {self.max_bytes:,}", url=url
            )
        part = part_path(dest, self.part_tag)
        digest = hashlib.sha256()
        size = 0
        try:
            with part.open("wb") as fh:
                chunks = response.aiter_bytes(_CHUNK) if encoded else response.aiter_raw(_CHUNK)
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise DownloadTooLargeError(
                            f"image exceeds the cap of {self.max_bytes:,} bytes", url=url
                        )
                    digest.update(chunk)
                    fh.write(chunk)
                if declared is not None and declared.isdigit() and size != int(declared):
                    raise TruncatedDownloadError(
                        f"got {size:,} of {int(declared):,} bytes", url=url
                    )
                if self.durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            width, height, fmt = verify_image(part)
            os.replace(part, dest)
            if self.durable:
                _fsync_dir(dest.parent)
        except httpx.HTTPError as exc:
            raise _translate(exc, url) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        await anyio.lowlevel.checkpoint()
        return SavedImage(dest, size, digest.hexdigest(), width, height, fmt)

    def save_bytes(self, data: bytes, dest: Path) -> SavedImage:
        """Write inline image bytes (``b64_json``) to ``dest`` with the same guarantees."""
        if len(data) > self.max_bytes:
            raise DownloadTooLargeError(
                f"inline image of {len(data):,} bytes exceeds the cap of {self.max_bytes:,}"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = part_path(dest, self.part_tag)
        try:
            with part.open("wb") as fh:
                fh.write(data)
                if self.durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            width, height, fmt = verify_image(part)
            os.replace(part, dest)
            if self.durable:
                _fsync_dir(dest.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        return SavedImage(dest, len(data), hashlib.sha256(data).hexdigest(), width, height, fmt)


def part_path(dest: Path, tag: str = "") -> Path:
    """A hidden partial file beside ``dest``: ``.bg-[<tag>-]<random>.part``.

    Short and independent of the final name, which may already use all 255 bytes.
    """
    prefix = f".bg-{tag}-" if tag else ".bg-"
    return dest.with_name(f"{prefix}{secrets.token_hex(6)}{PART_SUFFIX}")


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once its directory entry is; some systems refuse, harmlessly.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def _resolve_host(host: str) -> list[str]:
    # A name that does not resolve fails later, as a download error with its own message.
    try:
        infos = await anyio.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return [str(info[4][0]) for info in infos]


def _translate(exc: httpx.HTTPError, url: str) -> DownloadError:
    detail = redact(str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return TruncatedDownloadError(f"download cut short: {detail}", url=url)
    if isinstance(exc, httpx.TimeoutException):
        return DownloadError(f"download timed out ({type(exc).__name__})", url=url)
    if isinstance(exc, httpx.ConnectError):
        return DownloadError(f"cannot connect to the result host: {detail}", url=url)
    return DownloadError(f"download failed: {detail}", url=url)
