"""Generated axes: asking the chat model for an axis's values, and locking them.

For each generated axis that needs values, :func:`generate_axes` asks the chat route
(streamed) for the values still missing, reads one value per line (or a JSON list),
trims them, drops empty lines, duplicates and preambles, and asks again for the
shortfall, at most ``ceil(count / PER_REQUEST) + EXTRA_REQUESTS`` times per axis.
Then it writes the lockfile (:mod:`batchgen.spec.lock`) with every axis's values and
provenance: the model, the instruction, when, the request ids, the tokens and cost.

A chat call can be charged, so it goes the way of an image submission: the budget
first (at its estimated cost), the run's shared throttle (the gateway counts chat calls
in the same window), ``sending`` committed to the ledger before the request leaves and
the answer committed as soon as it is in (:mod:`batchgen.ledger.chats`). Answers paid
for by a lock that did not finish are reused before anything is asked again; a call
whose answer was lost is recorded ``unknown`` and said, never hidden.

Prices: the answer's ``usage`` (tokens) at :data:`batchgen.api.catalog.CHAT_PRICES`,
or, when an answer states no usage, tokens estimated at four characters each.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio

from batchgen.api.catalog import chat_cost
from batchgen.api.client import CobabaClient
from batchgen.api.responses import ChatUsage
from batchgen.errors import (
    Accepted,
    AccessDeniedError,
    AuthenticationError,
    BatchgenError,
    GenerationError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    UsageError,
)
from batchgen.ledger.chats import ChatRow
from batchgen.ledger.store import Ledger
from batchgen.runner.budget import Budget
from batchgen.runner.pacing import BackoffPolicy, ParkedError, full_jitter
from batchgen.runner.progress import ProgressHook
from batchgen.runner.throttle import Throttle
from batchgen.runner.window import UNKNOWN, outcome_of
from batchgen.spec.load import Spec
from batchgen.spec.lock import LOCKED, MISSING, STALE, GeneratedAxis, LockedAxis, write_lock

__all__ = ["PER_REQUEST", "Asker", "chat_body", "generate_axes", "parse_values"]

#: Values asked for in one request (long answers are where models drift and stop).
PER_REQUEST: Final = 100
#: Requests per axis beyond the ones its count needs, for the shortfall.
EXTRA_REQUESTS: Final = 3
#: Values listed after "Do not repeat" in a request for the shortfall.
MAX_LISTED: Final = 500
#: Completion tokens reserved per value asked, for the budget (an upper estimate).
TOKENS_PER_VALUE: Final = 16
SYSTEM: Final = (
    "You write values for a dataset, exactly as asked. Answer with the values only: one"
    " per line, no numbering, no bullets, no quotes, no blank lines, no other text."
)

_BULLET = re.compile(r"^(?:[-*•·]+|\(?\d{1,5}[.):]|#+)\s+")
# Straight, curly double, curly single quotes and backticks.
_QUOTES = ('""', "''", "\u201c\u201d", "\u2018\u2019", "``")


def parse_values(text: str, *, template: bool = False) -> list[str]:
    """The values in a chat answer, in order: a JSON list, or one value per line.

    Lines are trimmed of whitespace, list bullets and numbering, surrounding quotes and
    a trailing comma; empty lines, code fences, a line ending in ``:`` (a preamble such
    as "Here are 50 objects:") and duplicates (ignoring case and spacing) are dropped.
    With ``template`` (a prompt axis, whose values are templates) values with braces
    are dropped too.
    """
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = "\n".join(line for line in stripped.splitlines() if not line.startswith("```"))
    candidates: list[str]
    try:
        data = json.loads(stripped)
    except ValueError:
        data = None
    if isinstance(data, list) and all(isinstance(v, str | int | float) for v in data):
        candidates = [str(v) for v in data]
    else:
        candidates = stripped.splitlines()
    values: list[str] = []
    seen: set[str] = set()
    for line in candidates:
        value = _clean(line)
        if not value or value.endswith(":") or (template and ("{" in value or "}" in value)):
            continue
        norm = " ".join(value.casefold().split())
        if norm not in seen:
            seen.add(norm)
            values.append(value)
    return values


def _clean(line: str) -> str:
    value = _BULLET.sub("", line.strip()).strip().rstrip(",").strip()
    for pair in _QUOTES:
        if len(value) >= 2 and value[0] == pair[0] and value[-1] == pair[1]:
            value = value[1:-1].strip()
    return " ".join(value.split())


def chat_body(axis: GeneratedAxis, want: int, have: Sequence[str]) -> dict[str, Any]:
    """The streamed chat request for ``want`` more values of ``axis``, ``have`` known."""
    ask = f"{axis.instruction}\n\nGive exactly {want} values, one per line."
    if have:
        listed = list(have)[-MAX_LISTED:]
        ask += "\n\nDo not repeat any of these:\n" + "\n".join(listed)
    return {
        "model": axis.model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ask}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


@dataclass(slots=True)
class _Tally:
    """What one axis's answers add up to."""

    values: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    chat_ids: list[int] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = 0.0
    estimated: bool = False

    def add(self, row: ChatRow, *, template: bool) -> int:
        """Count one answered call; return how many new values it gave."""
        self.chat_ids.append(row.id)
        if row.request_id:
            self.request_ids.append(row.request_id)
        self.prompt_tokens += row.prompt_tokens or 0
        self.completion_tokens += row.completion_tokens or 0
        self.estimated |= row.cost_source != "usage"
        if self.cost is not None:
            self.cost = None if row.cost_source == "none" else self.cost + row.cost
        before = len(self.values)
        for value in parse_values(row.answer or "", template=template):
            norm = " ".join(value.casefold().split())
            if norm not in self.seen:
                self.seen.add(norm)
                self.values.append(value)
        return len(self.values) - before


class Asker:
    """Asks the chat model for generated axes, through the run's ledger, throttle and budget.

    ``spent`` is the job's spend so far by batchgen's estimate (tasks and chat calls);
    each answer's cost is added to it. ``max_attempts`` bounds the tries of one request
    that fails (5xx, a lost connection); 429s wait for the throttle and do not count.
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        client: CobabaClient,
        throttle: Throttle,
        budget: Budget,
        spent: float,
        hook: ProgressHook,
        currency: str,
        max_attempts: int = 5,
        rng: random.Random | None = None,
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.throttle = throttle
        self.budget = budget
        self.spent = spent
        self.hook = hook
        self.currency = currency
        self.max_attempts = max_attempts
        self.rng = rng or random.Random()
        self.requests = 0  # chat requests sent by this Asker

    async def recover(self) -> None:
        """Chat calls a dead process left ``sending`` become ``unknown``, and are said."""
        lost = await self.ledger.chat_recover()
        if lost:
            self.hook.on_message(
                "warning",
                f"{lost} chat request(s) were being sent when the last lock stopped: marked"
                " unknown (they may have been charged); the values they asked for are asked"
                " again",
            )

    async def axis(self, axis: GeneratedAxis, *, refresh: bool) -> LockedAxis:
        """Ask for the values of one axis (reusing answers no lock holds yet)."""
        if refresh:
            await self.ledger.chat_supersede(axis.name)
        tally = _Tally()
        template = axis.name == "prompt"
        reused = await self.ledger.chat_answers(axis.name, axis.asked)
        for row in reused:
            tally.add(row, template=template)
        if reused:
            self.hook.on_message(
                "info",
                f"axis {axis.name!r}: reusing {len(reused)} chat answer(s) already paid for"
                f" ({min(len(tally.values), axis.count)} of {axis.count} values)",
            )
        budget = math.ceil(axis.count / PER_REQUEST) + EXTRA_REQUESTS
        asked = 0
        while len(tally.values) < axis.count:
            if asked >= budget:
                raise GenerationError(
                    f"axis {axis.name!r}: {len(tally.values)} distinct values after"
                    f" {asked} request(s), {axis.count} asked: change the instruction or lower"
                    " the count, or lock again (the answers so far are kept and reused)",
                    axis=axis.name,
                )
            want = min(PER_REQUEST, axis.count - len(tally.values))
            row = await self._ask(axis, chat_body(axis, want, tally.values))
            asked += 1
            tally.add(row, template=template)
        return _locked(axis, tally)

    async def _ask(self, axis: GeneratedAxis, body: dict[str, Any]) -> ChatRow:
        """Send one chat request (with retries) and return its answered ledger row."""
        prompt_text = " ".join(str(m["content"]) for m in body["messages"])
        wanted = int(re.findall(r"exactly (\d+)", prompt_text)[-1])
        estimate = chat_cost(axis.model, _tokens(prompt_text), wanted * TOKENS_PER_VALUE) or 0.0
        failures = 0
        while True:
            if self.budget.would_pass(self.spent, 0.0, estimate):
                raise GenerationError(
                    f"budget {self.budget.limit or 0:g} {self.currency} reached before axis"
                    f" {axis.name!r} got its values (spent {self.spent:.4f}): raise"
                    " limits.budget and lock again",
                    axis=axis.name,
                    code="budget",
                )
            permit = await self.throttle.acquire()
            chat_id = await self.ledger.chat_intent(
                axis=axis.name, asked=axis.asked, model=axis.model, request=body
            )
            self.requests += 1
            sent = anyio.current_time()
            parts: list[str] = []
            usage: ChatUsage | None = None
            request_id: str | None = None
            try:
                async with self.client.chat_completions_stream(body) as chunks:
                    async for chunk in chunks:
                        request_id = chunk.request_id or request_id
                        parts.append(chunk.delta)
                        usage = chunk.usage or usage
            except BatchgenError as exc:
                partial = "".join(parts)
                accepted = exc.accepted is not Accepted.NO or bool(partial)
                await self.ledger.chat_failed(
                    chat_id,
                    accepted=accepted,
                    code=exc.code,
                    message=str(exc),
                    request_id=request_id or getattr(exc, "request_id", None),
                    partial=partial or None,
                )
                if await self._retry(exc, sent, permit, accepted, failures):
                    failures += 0 if isinstance(exc, RateLimitError) else 1
                    continue
                raise
            except BaseException:
                self.throttle.on_abandoned(permit, UNKNOWN)
                with anyio.CancelScope(shield=True):
                    await self.ledger.chat_failed(
                        chat_id, accepted=True, code="interrupted", message="stopped"
                    )
                raise
            self.throttle.on_success(sent, permit)
            return await self._record(axis, chat_id, prompt_text, "".join(parts), usage, request_id)

    async def _record(
        self,
        axis: GeneratedAxis,
        chat_id: int,
        prompt_text: str,
        text: str,
        usage: ChatUsage | None,
        request_id: str | None,
    ) -> ChatRow:
        if usage is not None:
            prompt, completion, source = usage.prompt_tokens, usage.completion_tokens, "usage"
        else:
            prompt, completion, source = _tokens(prompt_text), _tokens(text), "estimate"
        cost = chat_cost(axis.model, prompt, completion)
        if cost is None:
            source = "none"
        await self.ledger.chat_answered(
            chat_id,
            answer=text,
            request_id=request_id,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost=cost or 0.0,
            cost_source=source,
        )
        self.spent += cost or 0.0
        return ChatRow(
            chat_id, axis.name, axis.asked, axis.model, "answered", request_id, prompt,
            completion, cost or 0.0, source, text,
        )  # fmt: skip

    async def _retry(
        self, exc: BatchgenError, sent: float, permit: Any, accepted: bool, failures: int
    ) -> bool:
        """Tell the throttle; wait before the next try and return True, or False to stop."""
        if isinstance(exc, RateLimitError):
            try:
                self.throttle.on_rate_limited(
                    exc.retry_after,
                    sent,
                    limit=exc.limit,
                    empty=exc.empty,
                    server=exc.server,
                    permit=permit,
                )
            except ParkedError as parked:
                raise GenerationError(
                    f"the service asked to wait {parked.delay:,.0f}s before the next chat"
                    " request: lock again later",
                    code="parked",
                ) from None
            return True
        self.throttle.on_abandoned(permit, outcome_of(exc))
        fatal = AuthenticationError | AccessDeniedError | QuotaExceededError | PermissionDeniedError
        if isinstance(exc, fatal) or not (exc.retryable or accepted):
            return False
        if accepted:
            self.hook.on_message(
                "warning",
                f"a chat answer was lost after the request left ({exc.code}); it may have been"
                " charged: asking again",
            )
        if failures + 1 >= self.max_attempts:
            return False
        counted = self.throttle.on_failure() if exc.retryable else True
        delay = full_jitter(BackoffPolicy(base=1.0, cap=30.0), failures if counted else 0, self.rng)
        await anyio.sleep(delay)
        return True


def _locked(axis: GeneratedAxis, tally: _Tally) -> LockedAxis:
    source = "none" if tally.cost is None else ("estimate" if tally.estimated else "usage")
    return LockedAxis(
        name=axis.name,
        model=axis.model,
        instruction=axis.instruction,
        count=axis.count,
        asked=axis.asked,
        values=tuple(tally.values[: axis.count]),
        generated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        requests=len(tally.chat_ids),
        request_ids=tuple(tally.request_ids),
        prompt_tokens=tally.prompt_tokens,
        completion_tokens=tally.completion_tokens,
        cost=tally.cost,
        currency="CNY",
        cost_source=source,
    )


async def generate_axes(
    asker: Asker, spec: Spec, *, refresh: Collection[str] = (), stale: bool = False
) -> list[LockedAxis]:
    """Ask for every generated axis that needs values and write the lockfile.

    Missing axes are asked for; stale ones too when ``stale`` (``batchgen lock``; a run
    refuses them before this); the axes in ``refresh`` are asked again whatever their
    state. The lock keeps the other axes' values as they are. An axis that fails raises
    GenerationError after the lock is written with the axes that succeeded.
    Returns the axes asked for, as locked.
    """
    names = {g.name for g in spec.generated}
    unknown = sorted(set(refresh) - names)
    if unknown:
        known = ", ".join(sorted(names)) or "none"
        raise UsageError(f"--refresh {unknown[0]}: not a generated axis of the spec ({known})")
    wanted = [
        g
        for g in spec.generated
        if g.state == MISSING or (stale and g.state == STALE) or g.name in refresh
    ]
    if not wanted:
        return []
    assert spec.lock_path is not None
    await asker.recover()
    done: dict[str, LockedAxis] = {}
    failure: GenerationError | None = None
    for axis in wanted:
        try:
            done[axis.name] = await asker.axis(axis, refresh=axis.name in refresh)
        except GenerationError as exc:
            failure = exc
            break
    kept = [
        done.get(g.name) or g.locked
        for g in spec.generated
        if g.name in done or (g.state in (LOCKED, STALE) and g.locked is not None)
    ]
    if done:
        write_lock(spec.lock_path, spec.path.name, [a for a in kept if a is not None])
        # Only once the lock holds their values: a crash before this reuses the answers.
        for axis in wanted:
            if axis.name in done:
                rows = await asker.ledger.chat_answers(axis.name, axis.asked)
                await asker.ledger.chat_locked([r.id for r in rows])
    if failure is not None:
        raise failure
    return [done[g.name] for g in wanted]
