"""Shared fixtures: the anyio backend (asyncio, which aiosqlite needs), the simulator, and
an English locale for every test (they read batchgen's English messages)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from batchgen.sim import SimConfig, SimServer, running_simulator

#: Builds a running simulator from a config: ``async with sim_factory(cfg) as sim: ...``.
SimFactory = Callable[[SimConfig], AbstractAsyncContextManager[SimServer]]


@pytest.fixture(autouse=True)
def _english_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI speaks Chinese under a zh locale: pin English, whatever this machine says."""
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")


@pytest.fixture
def anyio_backend() -> str:
    """Run every anyio test on asyncio."""
    return "asyncio"


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    """A running simulator on a free loopback port: latency 0.05 s, seed 0, key ``sk-sim``."""
    async with running_simulator(SimConfig(latency=0.05, seed=0)) as server:
        yield server


@pytest.fixture
def sim_factory() -> SimFactory:
    """Start simulators with other settings: ``async with sim_factory(SimConfig(...)) as sim``."""
    return running_simulator
