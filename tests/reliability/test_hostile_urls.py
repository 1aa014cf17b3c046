"""Hostile result URLs: other schemes, redirects elsewhere, private addresses, credentials."""

from __future__ import annotations

import http.server
import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx2 as httpx
import pytest
from PIL import Image

from batchgen.api.auth import BearerAuth
from batchgen.errors import DownloadError
from batchgen.output.fetch import Downloader
from batchgen.runner.job import RunOptions, arun
from batchgen.sim import SimConfig, running_simulator
from tests.reliability.harness import (
    CANARY,
    CANARY_SCAN,
    figure,
    ledger_rows,
    png_files,
    write_spec,
)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


@dataclass
class Capture:
    """A result host on loopback that records every request's path and headers."""

    port: int = 0
    sim_origin: str = ""
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def with_credentials(self) -> int:
        """Requests that carried Authorization, Cookie or the canary anywhere."""
        return sum(
            1
            for path, headers in self.requests
            if {"authorization", "cookie"} & set(headers) or CANARY in path + str(headers)
        )


@pytest.fixture
def capture() -> Iterator[Capture]:
    """A threaded HTTP server: ``/img.png``, ``/redirect?to=``, ``/cookie``, ``/proxy/<file>``."""
    record = Capture()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

        def do_GET(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            record.requests.append((self.path, headers))
            parts = urlsplit(self.path)
            if parts.path == "/redirect":
                self._send(302, b"", [("Location", parse_qs(parts.query)["to"][0])])
            elif parts.path == "/cookie":
                self._send(302, b"", [("Set-Cookie", "session=stolen"), ("Location", "/img.png")])
            elif parts.path.startswith("/proxy/"):
                answer = httpx.get(record.sim_origin + "/files/" + parts.path[7:], timeout=30)
                self._send(answer.status_code, answer.content, [("Content-Type", "image/png")])
            else:
                self._send(200, PNG, [("Content-Type", "image/png")])

        def _send(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    record.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()


async def _refused(downloader: Downloader, url: str, dest: Path) -> tuple[str, float]:
    """Fetch ``url``; return the error code and the seconds it took to refuse."""
    started = time.monotonic()
    try:
        await downloader.fetch(url, dest)
    except DownloadError as exc:
        CANARY_SCAN.scan_text("download error", f"{exc} {exc!r}")
        return exc.code, time.monotonic() - started
    return "fetched", time.monotonic() - started


SCHEMES = [
    "file:///etc/passwd",
    "file://localhost/etc/hostname",
    "ftp://example.com/image.png",
    "gopher://example.com/1",
    "data:image/png;base64,iVBORw0KGgo=",
    "javascript:alert(1)",
    "//example.com/image.png",
    "http:///image.png",
    "https://user:secret@example.com/image.png",
]
PRIVATE = [
    "http://127.0.0.1:{port}/img.png",
    "http://localhost:{port}/img.png",
    "http://sub.localhost:{port}/img.png",
    "http://[::1]:{port}/img.png",
    "http://[::ffff:127.0.0.1]:{port}/img.png",
    "http://0.0.0.0:{port}/img.png",
    "http://2130706433:{port}/img.png",  # 127.0.0.1 written as one number
    "http://0x7f000001:{port}/img.png",
    "http://127.1:{port}/img.png",
    "http://10.0.0.1/img.png",
    "http://172.16.5.4/img.png",
    "http://192.168.1.1/img.png",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://100.64.0.1/img.png",
    "http://[fd00::1]/img.png",
    "http://[fe80::1]/img.png",
    "http://rebind.example/img.png",  # resolves to 10.0.0.7 (injected resolver)
]


@pytest.mark.reliability
@pytest.mark.anyio
async def test_downloader_refuses_hostile_urls(tmp_path: Path, capture: Capture) -> None:
    """Other schemes and private addresses are refused before any byte is sent or written."""

    async def resolve(host: str) -> list[str]:
        if host == "rebind.example":
            return ["10.0.0.7"]
        import socket

        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            return []
        return [str(i[4][0]) for i in infos]

    dest = tmp_path / "out" / "x.png"
    outcomes: dict[str, str] = {}
    times: list[float] = []
    async with Downloader(allow_local=False, timeout=5, resolve=resolve) as downloader:
        for url in SCHEMES + [u.format(port=capture.port) for u in PRIVATE]:
            code, took = await _refused(downloader, url, dest)
            outcomes[url] = code
            times.append(took)
    assert {url: code for url, code in outcomes.items() if code != "unsafe_url"} == {}
    assert capture.requests == [], "a refused URL still reached the host"
    assert not dest.exists()
    assert not any((tmp_path / "out").glob(".*"))
    figure(
        "hostile-urls downloader",
        f"{len(SCHEMES)} non-http(s)/credential URLs and {len(PRIVATE)} private/loopback"
        f" forms (decimal, hex, IPv4-mapped, metadata, DNS to 10/8) refused as unsafe_url,"
        f" 0 requests reached them, slowest refusal {max(times) * 1000:.1f} ms",
    )


@pytest.mark.reliability
@pytest.mark.anyio
async def test_redirects_stay_on_the_same_host(tmp_path: Path, capture: Capture) -> None:
    """Redirects to another host, port or scheme are refused; cookies never ride along."""
    other = f"http://localhost:{capture.port}/img.png"  # same socket, another host name
    cases = {
        "other host": f"/redirect?to={quote(other, safe='')}",
        "other port": f"/redirect?to={quote('http://127.0.0.1:9/img.png', safe='')}",
        "file scheme": f"/redirect?to={quote('file:///etc/passwd', safe='')}",
        "metadata": f"/redirect?to={quote('http://169.254.169.254/', safe='')}",
    }
    async with Downloader(allow_local=True, timeout=5) as downloader:
        codes = {
            name: (await _refused(downloader, capture.origin + path, tmp_path / f"{i}.png"))[0]
            for i, (name, path) in enumerate(cases.items())
        }
        same = await downloader.fetch(capture.origin + "/cookie", tmp_path / "same.png")
    assert codes == dict.fromkeys(cases, "unsafe_url")
    hosts = {headers.get("host", "") for _, headers in capture.requests}
    assert hosts == {f"127.0.0.1:{capture.port}"}, "a redirect was followed to another host"
    assert same.size == len(PNG)
    assert capture.with_credentials() == 0, "a cookie set by a result host was sent back"
    assert not list(tmp_path.glob("[0-9].png"))
    figure(
        "hostile-urls redirects",
        f"{len(cases)} redirects (other host, other port, file:, metadata IP) refused;"
        " a same-host redirect that sets a cookie is followed without sending it back",
    )


@pytest.mark.reliability
@pytest.mark.anyio
@pytest.mark.parametrize(
    "template",
    [
        "file:///etc/passwd#{file}",
        "ftp://127.0.0.1/{file}",
        "{origin}/_sim/redirect?to=http://localhost:PORT/files/{file}",
        "REMOTE",
    ],
    ids=["file", "ftp", "redirect-other-host", "loopback-when-remote"],
)
async def test_runner_refuses_and_reports(tmp_path: Path, template: str) -> None:
    """A service handing out hostile URLs gets every task failed as unsafe_url, reported."""
    config = SimConfig(latency=0.1, seed=1, keys=[CANARY], image_scale=0.1)
    spec = write_spec(tmp_path / "job", name="hostile", tasks=6, concurrency=6)
    async with running_simulator(config) as sim:
        remote = template == "REMOTE"
        config.result_url_template = None if remote else template.replace("PORT", str(sim.port))
        options = RunOptions(
            base_url=sim.base_url,
            auth=BearerAuth(CANARY),
            allow_local_results=False if remote else None,
        )
        summary = await arun(spec, options)
        stats = sim.stats()
    CANARY_SCAN.scan_text("summary", str(summary.as_dict()))
    rows = ledger_rows(tmp_path / "job" / "out" / "batchgen.sqlite")
    assert summary.exit_code == 1
    assert summary.failures_by_code == {"unsafe_url": 6}
    assert {r.state for r in rows} == {"failed"}
    assert all("refused" in (r.error_message or "") for r in rows)
    assert png_files(tmp_path / "job" / "out") == []
    assert stats["downloads"] == 0
    assert stats["downloads_with_credentials"] == 0
    figure(
        f"hostile-urls runner {template if not remote else 'loopback, service remote'}",
        f"6/6 tasks failed 'unsafe_url' ({rows[0].error_message!r:.70}), 0 files written,"
        " 0 downloads",
    )


@pytest.mark.reliability
@pytest.mark.anyio
async def test_credentials_never_reach_a_result_host(tmp_path: Path, capture: Capture) -> None:
    """Results served from a separate host: it sees no Authorization, no cookie, no key."""
    config = SimConfig(latency=0.1, seed=1, keys=[CANARY], image_scale=0.1)
    spec = write_spec(tmp_path / "job", name="creds", tasks=10, concurrency=5)
    async with running_simulator(config) as sim:
        capture.sim_origin = sim.origin
        config.result_url_template = capture.origin + "/proxy/{file}"
        summary = await arun(spec, RunOptions(base_url=sim.base_url, auth=BearerAuth(CANARY)))
    assert summary.exit_code == 0, summary.failures_by_code
    assert len(capture.requests) == 10
    assert capture.with_credentials() == 0
    figure(
        "credentials",
        f"{len(capture.requests)} downloads from a separate result host: 0 carried"
        " Authorization, Cookie or the key",
    )


@pytest.mark.reliability
@pytest.mark.anyio
async def test_dns_rebinding_cannot_reach_loopback(tmp_path: Path, capture: Capture) -> None:
    """A name that resolves public at check time and loopback at connect time is refused."""
    import socket

    host = socket.gethostname()
    try:
        addresses = {str(i[4][0]) for i in socket.getaddrinfo(host, None)}
    except OSError:
        addresses = set()
    if not any(a.startswith("127.") or a == "::1" for a in addresses):
        pytest.skip(f"{host} does not resolve to loopback here")

    async def first_answer_public(name: str) -> list[str]:
        return ["93.184.216.34"]  # the rebinding server's first, short-lived answer

    async with Downloader(allow_local=False, timeout=5, resolve=first_answer_public) as d:
        code, _ = await _refused(d, f"http://{host}:{capture.port}/img.png", tmp_path / "x.png")
    figure(
        "dns-rebinding",
        f"http://{host}:PORT/ checked as 93.184.216.34 (loopback at connect time): the"
        f" connection is pinned to the checked address ({code}),"
        f" {len(capture.requests)} request(s) reached the loopback server",
    )
    assert capture.requests == []
    # Pinned to the checked (public, unreachable here) address: the download fails
    # there, or is refused if the connection somehow lands on a private address.
    assert code in ("download_failed", "unsafe_url")
