"""The simulator's chat model over loopback: seeded value lines, usage, billing by token."""

from __future__ import annotations

from typing import Any

import pytest

from batchgen.api.auth import BearerAuth
from batchgen.api.catalog import chat_cost
from batchgen.api.client import CobabaClient
from batchgen.api.responses import ChatChunk
from batchgen.errors import UpstreamError
from batchgen.sim import SimConfig, SimServer
from tests.conftest import SimFactory

pytestmark = pytest.mark.anyio

MODEL = "gemini-3.1-pro-preview"


def ask(text: str, *, usage: bool = True) -> dict[str, Any]:
    """A chat body asking ``text``, with the stream's usage when ``usage``."""
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


async def stream(sim: SimServer, body: dict[str, Any]) -> list[ChatChunk]:
    """Every chunk of one streamed answer."""
    async with (
        CobabaClient(auth=BearerAuth("sk-sim"), base_url=sim.base_url) as client,
        client.chat_completions_stream(body) as chunks,
    ):
        return [chunk async for chunk in chunks]


def lines(chunks: list[ChatChunk]) -> list[str]:
    """The answer's text split into lines."""
    return "".join(c.delta for c in chunks).splitlines()


async def test_values_one_per_line_are_distinct(sim: SimServer) -> None:
    """Asking for 50 values one per line gives 50 distinct non-empty lines."""
    chunks = await stream(sim, ask("Everyday objects. Give exactly 50 values, one per line."))
    values = lines(chunks)
    assert len(values) == 50
    assert len(set(values)) == 50
    assert all(v.strip() == v and v for v in values)


async def test_values_are_seeded(sim_factory: SimFactory) -> None:
    """The same seed gives the same answers in the same order; the next answer differs."""
    body = ask("Give exactly 10 values, one per line.")
    runs = []
    for _ in range(2):
        async with sim_factory(SimConfig(seed=7, latency=0.01)) as sim:
            runs.append([lines(await stream(sim, body)), lines(await stream(sim, body))])
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[0][1]
    async with sim_factory(SimConfig(seed=8, latency=0.01)) as other:
        assert lines(await stream(other, body)) != runs[0][0]


async def test_listed_values_are_not_repeated(sim: SimServer) -> None:
    """Values listed after "Do not repeat" never come back."""
    first = lines(await stream(sim, ask("Give exactly 40 values, one per line.")))
    text = "Give exactly 40 values, one per line.\nDo not repeat any of these:\n" + "\n".join(first)
    second = lines(await stream(sim, ask(text)))
    assert len(second) == 40
    assert not set(first) & set(second)


async def test_lines_marker_caps_the_answer(sim: SimServer) -> None:
    """[sim:lines=N] answers at most N lines, however many were asked."""
    values = lines(await stream(sim, ask("Give exactly 30 values, one per line. [sim:lines=7]")))
    assert len(values) == 7


async def test_usage_and_request_id_reach_the_client(sim: SimServer) -> None:
    """With include_usage the last chunk states the tokens; every chunk has the request id."""
    chunks = await stream(sim, ask("Give exactly 5 values, one per line."))
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[0].request_id
    assert {c.request_id for c in chunks} == {chunks[0].request_id}
    plain = await stream(sim, ask("Give exactly 5 values, one per line.", usage=False))
    assert all(c.usage is None for c in plain)


async def test_chat_is_billed_by_token(sim: SimServer) -> None:
    """Each answer is charged its tokens at the table's chat price, and counted."""
    chunks = await stream(sim, ask("Give exactly 20 values, one per line."))
    usage = chunks[-1].usage
    assert usage is not None
    cost = chat_cost(MODEL, usage.prompt_tokens, usage.completion_tokens)
    assert cost is not None
    stats = sim.stats()
    assert stats["chat_answers"] == 1
    assert stats["chat_charged"] == pytest.approx(cost, abs=1e-6)
    assert stats["usage_by_key"] == {"key#1": pytest.approx(cost, abs=1e-6)}
    assert stats["submissions_charged"] == 0


async def test_failing_chat_is_not_billed(sim: SimServer) -> None:
    """An answer that fails mid-stream ([sim:error]) costs nothing."""
    with pytest.raises(UpstreamError):
        await stream(sim, ask("Give exactly 5 values, one per line. [sim:error]"))
    assert sim.stats()["chat_charged"] == 0
