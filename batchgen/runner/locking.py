"""Locking a job's generated axes: ``batchgen lock``, and a run's first step when needed.

:func:`lock_job` is the library call behind ``batchgen lock SPEC``: it opens the job's
ledger (the chat calls are recorded there, as image submissions are), paces the chat
calls with a throttle like a run's (starting from the limit an earlier run learnt),
holds them against ``limits.budget`` by batchgen's estimate, asks for every generated
axis that is missing or stale (and those named in ``refresh``), and writes the lock.

:func:`lock_for_run` is the same inside :func:`batchgen.runner.job.arun`, with the run's
own throttle, so a spec whose axes are not locked yet is locked first (and says so); it
returns the spec read again with the values the lock now holds.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import anyio

from batchgen.api.auth import BearerAuth, PlaygroundAuth, Timeouts, auth_from_env
from batchgen.api.client import CobabaClient
from batchgen.ledger.lease import hold
from batchgen.ledger.paths import ledger_path
from batchgen.ledger.store import Ledger
from batchgen.runner.budget import Budget
from batchgen.runner.generate import Asker, generate_axes
from batchgen.runner.progress import NullHook, ProgressHook
from batchgen.runner.service_limit import ServiceLimit
from batchgen.runner.startup import remembered_limit
from batchgen.runner.state import PipelineLimits, submit_throttle
from batchgen.runner.throttle import Throttle
from batchgen.spec.load import Spec
from batchgen.spec.lock import LockedAxis

__all__ = ["LockReport", "describe_locked", "lock_for_run", "lock_job"]


@dataclass(frozen=True, slots=True)
class LockReport:
    """What ``batchgen lock`` did: the axes it asked for (as locked), where the lock is,
    and how many chat requests it sent."""

    axes: tuple[LockedAxis, ...]
    lock_path: Path
    requests: int


def describe_locked(axis: LockedAxis) -> str:
    """One line about a freshly locked axis: values, model, requests, cost."""
    cost = "cost unknown" if axis.cost is None else f"{axis.cost:.4f} {axis.currency}"
    if axis.cost is not None and axis.cost_source == "estimate":
        cost += " (estimated)"
    return (
        f"axis {axis.name!r}: {len(axis.values)} values by {axis.model} in"
        f" {axis.requests} chat request(s), {cost}"
    )


async def lock_for_run(
    spec: Spec,
    *,
    ledger: Ledger,
    client: CobabaClient,
    throttle: Throttle,
    budget: Budget,
    spent: float,
    hook: ProgressHook,
) -> Spec:
    """Lock the axes of ``spec`` that have no values yet; return the spec read again."""
    names = ", ".join(repr(g.name) for g in spec.unlocked)
    hook.on_message("info", f"generating the values of {names} first, then locking them")
    asker = Asker(
        ledger=ledger,
        client=client,
        throttle=throttle,
        budget=budget,
        spent=spent,
        hook=hook,
        currency=spec.currency,
        max_attempts=spec.limits.max_attempts,
    )
    for axis in await generate_axes(asker, spec):
        hook.on_message("info", f"{describe_locked(axis)}; locked in {spec.lock_path}")
    return spec.relocked()


async def lock_job(
    spec: Spec,
    *,
    refresh: Collection[str] = (),
    base_url: str | None = None,
    auth: BearerAuth | PlaygroundAuth | None = None,
    hook: ProgressHook | None = None,
    seed: int | None = None,
) -> LockReport:
    """Ask for the generated axes of ``spec`` that are missing or stale (and those in
    ``refresh``, whatever their state) and write the lockfile.

    Raises UsageError for a ``refresh`` name that is not a generated axis,
    GenerationError when an axis does not get its values (the others are locked), and
    the client's errors (a refused key) as a run would.
    """
    hook = hook or NullHook()
    assert spec.lock_path is not None
    if not (spec.unlocked or spec.stale or refresh):
        return LockReport((), spec.lock_path, 0)
    url = base_url or spec.base_url
    limits = PipelineLimits(
        requests_per_minute=spec.limits.requests_per_minute,
        burst=spec.limits.burst,
        max_retry_after=spec.limits.max_retry_after,
        seed=seed,
    )
    rng = random.Random(seed)
    limit = ServiceLimit(clock=anyio.current_time)
    async with (
        CobabaClient(
            auth=auth or auth_from_env(),
            base_url=url,
            timeouts=Timeouts(submit=spec.limits.submit_timeout, poll=spec.limits.poll_timeout),
            max_connections=4,
        ) as client,
        Ledger.open(ledger_path(spec)) as ledger,
        # Chat calls spend credit: one writer, as for a run (a running run is refused).
        hold(ledger, command="batchgen lock", on_message=hook.on_message),
    ):
        await remembered_limit(ledger, limit, client.base_url, hook)
        spent = (await ledger.totals())["spent"]
        asker = Asker(
            ledger=ledger,
            client=client,
            throttle=submit_throttle(limits, rng, limit),
            # By the estimate only: a lock is a few chat calls, not worth the preflight.
            budget=Budget(limit=spec.limits.budget, spent_before=spent, clock=anyio.current_time),
            spent=spent,
            hook=hook,
            currency=spec.currency,
            max_attempts=spec.limits.max_attempts,
            rng=rng,
        )
        axes = await generate_axes(asker, spec, refresh=refresh, stale=True)
    return LockReport(tuple(axes), spec.lock_path, asker.requests)
