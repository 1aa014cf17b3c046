"""Shared fixtures: the anyio backend (asyncio, which aiosqlite needs)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run every anyio test on asyncio."""
    return "asyncio"
