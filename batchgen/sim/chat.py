"""The simulator's chat model: deterministic, varied lines for dataset values, billed by token.

A user message that asks for N values "one per line" (as ``batchgen lock`` asks) gets N
distinct short phrases drawn from a seeded word list, never one that the message lists
after "Do not repeat"; any other message gets the echo reply of :mod:`.wire`. The
phrases depend only on the seed and on how many chat answers came before, so a test or
the demo gets the same values every time it starts the simulator with the same seed.

Prompt markers: ``[sim:lines=N]`` caps an answer at N lines (a model that gives fewer
values than asked, so the runner asks again); ``[sim:error]`` fails it (see
:func:`~batchgen.sim.wire.parse_chat`).

Billing follows the gateway's for chat models (by token, quota_type 0): the tokens are
estimated at four characters each, and charged at :data:`batchgen.api.catalog.CHAT_PRICES`
(models without a price there are free, as before); the answer states them in
``usage`` (in a stream, in a last chunk, when ``stream_options.include_usage`` asks).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Final

import batchgen.sim.gateway as gateway
from batchgen.api.catalog import chat_cost
from batchgen.sim.state import Account, SimState
from batchgen.sim.wire import message_text, reply_text

__all__ = ["ChatModel", "ChatTurn"]

_ASK: Final = re.compile(r"\b(\d{1,5})\s+(?:\w+\s+){0,2}?(?:values|lines|items)\b", re.IGNORECASE)
_LINES: Final = re.compile(r"\[sim:lines=(\d+)\]")
_AVOID: Final = "do not repeat"

_QUALITIES: Final = (
    "brass", "ceramic", "walnut", "linen", "glass", "copper", "matte black", "enamel",
    "leather", "bamboo", "marble", "stoneware", "cast iron", "rattan", "terracotta",
    "brushed steel", "oak", "cotton", "porcelain", "cork", "felt", "wicker", "pewter",
    "concrete", "velvet", "slate", "woollen", "silver", "olive wood", "frosted",
)  # fmt: skip
_THINGS: Final = (
    "teapot", "desk lamp", "wristwatch", "fountain pen", "coffee grinder", "water bottle",
    "notebook", "sunglasses", "headphones", "backpack", "candle holder", "fruit bowl",
    "table clock", "salt mill", "serving tray", "vase", "camera strap", "wallet",
    "key ring", "letter opener", "pencil cup", "soap dish", "picture frame", "mug",
    "chopping board", "bookend", "tumbler", "cake stand", "jewellery box", "hand mirror",
    "thermos", "planter", "espresso cup", "umbrella", "scarf", "bracelet", "ladle",
    "pepper grinder", "butter dish", "coaster set", "cutlery set", "pen holder", "lantern",
    "watering can", "doorstop", "clipboard", "hairbrush", "belt", "trinket dish", "stool",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One answer: its text, the tokens it is billed for, and whether usage is sent."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    include_usage: bool

    def usage(self) -> dict[str, int]:
        """The OpenAI ``usage`` object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _avoided(text: str) -> set[str]:
    at = text.lower().find(_AVOID)
    if at < 0:
        return set()
    return {line.strip().casefold() for line in text[at:].splitlines()[1:] if line.strip()}


class ChatModel:
    """The chat answers of one simulator (the sequence of answers is its state)."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self._answers = itertools.count()

    def answer(self, body: dict[str, Any], model: str, last_user_text: str) -> ChatTurn:
        """The answer to a checked chat body (``last_user_text`` from parse_chat)."""
        messages = body.get("messages")
        asked = " ".join(
            message_text(m) for m in (messages if isinstance(messages, list) else [])
            if isinstance(m, dict)
        )  # fmt: skip
        options = body.get("stream_options")
        include = isinstance(options, dict) and options.get("include_usage") is True
        wanted = _ASK.search(last_user_text)
        if wanted and "one per line" in last_user_text.lower():
            text = "\n".join(self._values(int(wanted.group(1)), last_user_text))
        else:
            text = reply_text(model, last_user_text)
        return ChatTurn(text, _tokens(asked), _tokens(text), include)

    def _values(self, wanted: int, text: str) -> list[str]:
        cap = _LINES.search(text)
        count = min(wanted, int(cap.group(1))) if cap else wanted
        n = next(self._answers)
        seed = hashlib.blake2b(f"chat:{self.state.config.seed}:{n}".encode(), digest_size=8)
        rng = random.Random(seed.digest())
        avoid = _avoided(text)
        pool = [f"a {q} {t}" for q in _QUALITIES for t in _THINGS]
        rng.shuffle(pool)
        return [p for p in pool if p.casefold() not in avoid][:count]

    def charge(self, account: Account, model: str, turn: ChatTurn) -> float:
        """Bill ``turn`` to ``account`` (the gateway's 403 when the balance cannot pay);
        return the cost."""
        cost = chat_cost(model, turn.prompt_tokens, turn.completion_tokens) or 0.0
        if account.balance - cost < -1e-9:
            raise gateway.user_quota(self.state.config.wire, account.balance)
        account.balance -= cost
        account.spent += cost
        counters = self.state.counters
        counters.chat_answers += 1
        counters.chat_charged += cost
        return cost
