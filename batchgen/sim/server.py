"""Running the simulator: in-process inside the caller's event loop, or blocking for the CLI.

:func:`running_simulator` binds its own socket (so the port is known before anything
is served), runs ``uvicorn.Server`` as a task of an anyio task group on the caller's
asyncio loop, and never touches signal handlers: whoever embeds the simulator owns
Ctrl-C. Leaving the context closes the app (long waits end), tells uvicorn to exit and
waits for it. :func:`serve` is the blocking form behind ``batchgen sim``; it stops on
SIGINT or SIGTERM through anyio's signal receiver.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus

from batchgen.sim.app import SimApp
from batchgen.sim.config import SimConfig
from batchgen.sim.state import SimState

__all__ = ["SimServer", "running_simulator", "serve"]


class _EmbeddedServer(uvicorn.Server):
    """uvicorn.Server that leaves signals alone, reports when it listens, stops at once."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.on_started: Callable[[], None] = lambda: None
        self.exit_requested: anyio.Event | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The embedding runner (or our own serve) owns SIGINT/SIGTERM.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.on_started()

    async def main_loop(self) -> None:
        # uvicorn's own loop notices should_exit only at its next 0.1 s tick; waking on
        # an event makes stopping prompt (tests start and stop a server each).
        self.exit_requested = anyio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with anyio.move_on_after(0.1):
                await self.exit_requested.wait()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's shutdown always sleeps 0.1 s and then polls every 0.1 s; this one
        # does the same steps but polls every 5 ms, so a stop takes milliseconds. The
        # app has already ended its long waits (SimApp.close), so connections drain fast.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        with anyio.move_on_after(self.config.timeout_graceful_shutdown or 2):
            # uvicorn signals no event when its last connection closes; poll its sets.
            while self.server_state.connections or self.server_state.tasks:  # noqa: ASYNC110
                await anyio.sleep(0.005)
        for task in list(self.server_state.tasks):
            task.cancel()
        for connection in list(self.server_state.connections):
            connection.transport.close()
        with anyio.move_on_after(1):
            for server in self.servers:
                await server.wait_closed()
        await self.lifespan.shutdown()

    def request_exit(self) -> None:
        """Set ``should_exit`` and wake the main loop."""
        self.should_exit = True
        if self.exit_requested is not None:
            self.exit_requested.set()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on sockets that say they are TCP,
    # and without it Nagle + delayed ACK add 40 ms to every keep-alive answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class SimServer:
    """A simulator bound to a socket; serve it with :func:`running_simulator`.

    ``config`` is live (changing a field changes behaviour at once), ``state`` gives
    tests direct access to tasks and counters, ``base_url`` is the API base
    (``http://HOST:PORT/v1``) and ``origin`` the host root. Raises OSError when the
    address cannot be bound.
    """

    def __init__(
        self,
        config: SimConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config.validate()
        self.config = config
        self.state = SimState(config, clock=clock)
        self.app = SimApp(self.state)
        self._socket = _bind(host, port)
        self.port: int = self._socket.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.origin = f"http://{shown}:{self.port}"
        self.base_url = self.origin + "/v1"
        uv_config = uvicorn.Config(
            self.app,
            lifespan="off",
            interface="asgi3",
            http="h11",
            ws="none",
            log_config=None,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=2,
            # Like nginx in front of the real gateway (75 s): a client keeping idle
            # connections for 30 s must never race the server closing them.
            timeout_keep_alive=75,
        )
        self._uvicorn = _EmbeddedServer(uv_config)

    def stats(self) -> dict[str, object]:
        """The same JSON object as ``GET /_sim/stats``."""
        return self.state.stats()

    def stop(self) -> None:
        """Ask the server to stop: long waits end at once and uvicorn exits promptly."""
        self.app.close()
        self._uvicorn.request_exit()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`stop`; reports ``task_status.started()`` once listening.

        If cancelled instead, shuts uvicorn down (shielded, bounded) before re-raising.
        """
        uv = self._uvicorn
        uv.on_started = task_status.started
        try:
            await uv.serve(sockets=[self._socket])
        except BaseException:
            if uv.started:
                with anyio.CancelScope(shield=True), anyio.move_on_after(3):
                    self.app.close()
                    await uv.shutdown(sockets=[self._socket])
            raise
        finally:
            self._socket.close()


@asynccontextmanager
async def running_simulator(
    config: SimConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[SimServer]:
    """Serve a simulator on ``host:port`` (0 = a free port) for the body of the block.

    Runs in the caller's asyncio event loop and installs no signal handlers. ``clock``
    drives task timing and URL expiry (tests may pass a fake one). On exit the server
    stops and every connection is closed before this returns.
    """
    server = SimServer(
        config if config is not None else SimConfig(), host=host, port=port, clock=clock
    )
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        try:
            yield server
        finally:
            server.stop()


def serve(config: SimConfig, *, on_ready: Callable[[SimServer], Any] | None = None) -> None:
    """Serve ``config`` on ``config.host:config.port`` until SIGINT or SIGTERM (blocking).

    ``on_ready`` is called once the server listens (the CLI prints the URL there).
    Raises OSError when the address cannot be bound.
    """
    anyio.run(_serve_until_signal, config, on_ready)


async def _serve_until_signal(
    config: SimConfig, on_ready: Callable[[SimServer], Any] | None
) -> None:
    # Open the receiver before announcing, so a signal sent right after the URL line
    # is seen by us and never by Python's default handler.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with running_simulator(config, host=config.host, port=config.port) as server:
            if on_ready is not None:
                on_ready(server)
            async for _ in signals:
                break
