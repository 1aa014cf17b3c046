"""Asking the service before paying: a few GETs, each allowed to fail on its own.

:func:`gather` sends the preflight GETs side by side (they are few: the gateway limits
``/api/*`` and the billing routes per IP) and keeps what each answered in
:class:`Facts`. A route that is missing (404) or fails becomes a :class:`RouteNote`
naming it; only a refused key (401) is more than a note, since nothing else would work.
A playground session cannot call the key's routes: they are noted as skipped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import anyio

from batchgen.api.auth import BearerAuth
from batchgen.api.client import CobabaClient
from batchgen.api.dashboard import Pricing, SiteStatus, Subscription, Usage
from batchgen.api.responses import Credits, ModelStatus
from batchgen.errors import APIError, AuthenticationError, BatchgenError

__all__ = ["Facts", "RouteNote", "gather", "read_usage"]

T = TypeVar("T")
#: The routes only a key (not a playground session) may call.
KEY_ROUTES = ("/v1/models", "/v1/dashboard/billing/subscription", "/v1/dashboard/billing/usage")


@dataclass(frozen=True, slots=True)
class RouteNote:
    """A route that did not answer usefully, and why (one line)."""

    route: str
    problem: str

    def __str__(self) -> str:
        return f"{self.route}: {self.problem}"


@dataclass(slots=True)
class Facts:
    """What the service said, route by route (None where it did not)."""

    models: frozenset[str] | None = None
    subscription: Subscription | None = None
    usage: Usage | None = None
    status: SiteStatus | None = None
    pricing: Pricing | None = None
    credits: Credits | None = None
    model_status: dict[str, ModelStatus] = field(default_factory=dict)
    notes: list[RouteNote] = field(default_factory=list)
    key_error: AuthenticationError | None = None
    server_version: str | None = None

    @property
    def answered(self) -> bool:
        """Whether any route answered at all."""
        return any(
            value is not None
            for value in (self.models, self.subscription, self.usage, self.status, self.pricing)
        ) or bool(self.credits or self.model_status or self.key_error)

    @property
    def key_accepted(self) -> bool | None:
        """True when a route of the key answered, False when the key was refused."""
        if self.key_error is not None:
            return False
        if self.models is not None or self.subscription is not None or self.usage is not None:
            return True
        return None


def _problem(exc: BatchgenError) -> str:
    if isinstance(exc, APIError) and exc.status == 404:
        return "not available here (404)"
    if isinstance(exc, APIError) and exc.status in (401, 403) and "common" in exc.route:
        return f"refused (HTTP {exc.status}; an admin route)"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    route = getattr(exc, "route", "")
    if route and text.startswith(route):  # the note names the route already
        text = text[len(route) :].lstrip(": ")
    return text[:200]


async def _ask(
    facts: Facts, route: str, call: Callable[[], Awaitable[T]], *, key_route: bool
) -> T | None:
    try:
        return await call()
    except AuthenticationError as exc:
        if key_route:
            facts.key_error = facts.key_error or exc
        facts.notes.append(RouteNote(route, _problem(exc)))
    except BatchgenError as exc:
        facts.notes.append(RouteNote(route, _problem(exc)))
    return None


async def gather(client: CobabaClient, models: Sequence[str], *, admin: bool = True) -> Facts:
    """Ask every preflight route (and, with ``admin``, getCredits and getModelStatus for
    each of ``models``); never raises for what a route answers."""
    facts = Facts()
    keyed = isinstance(client.auth, BearerAuth)

    async def models_() -> None:
        facts.models = await _ask(facts, "/v1/models", client.list_models, key_route=True)

    async def subscription() -> None:
        facts.subscription = await _ask(
            facts,
            "/v1/dashboard/billing/subscription",
            client.billing_subscription,
            key_route=True,
        )

    async def usage() -> None:
        facts.usage = await _ask(
            facts, "/v1/dashboard/billing/usage", client.billing_usage, key_route=True
        )

    async def status() -> None:
        facts.status = await _ask(facts, "/api/status", client.site_status, key_route=False)

    async def pricing() -> None:
        facts.pricing = await _ask(facts, "/api/pricing", client.pricing, key_route=False)

    async def credits() -> None:
        facts.credits = await _ask(
            facts, "/client/common/getCredits", client.get_credits, key_route=False
        )

    async def model_status(model: str) -> None:
        answer = await _ask(
            facts,
            f"/client/common/getModelStatus ({model})",
            lambda: client.get_model_status(model),
            key_route=False,
        )
        if answer is not None:
            facts.model_status[model] = answer

    async with anyio.create_task_group() as tg:
        tg.start_soon(status)
        tg.start_soon(pricing)
        if keyed:
            tg.start_soon(models_)
            tg.start_soon(subscription)
            tg.start_soon(usage)
            if admin:
                tg.start_soon(credits)
                for model in models:
                    tg.start_soon(model_status, model)
    if not keyed:
        for route in (
            "/v1/models",
            "/v1/dashboard/billing/subscription",
            "/v1/dashboard/billing/usage",
        ):
            facts.notes.append(RouteNote(route, "skipped: a playground session has no key"))
    facts.notes.sort(key=lambda note: note.route)
    facts.server_version = client.server_version
    return facts


async def read_usage(client: CobabaClient) -> Usage:
    """The key's usage now (raises the route's error: the caller decides)."""
    return await client.billing_usage()
