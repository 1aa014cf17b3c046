"""``batchgen check`` and ``plan --live`` as library calls: a job beside the service.

:func:`check` asks the service the preflight questions for a spec and compares what is
left of the job (from its ledger, read only) with the answers. :func:`live_prices`
gives the spec back with the prices a run would use. Neither writes anything.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from batchgen.api.auth import BearerAuth, PlaygroundAuth, auth_from_env
from batchgen.api.client import CobabaClient
from batchgen.ledger.job import open_job
from batchgen.ledger.paths import job_ledgers
from batchgen.ledger.schema import MEASURED_META
from batchgen.preflight.check import Report, check_job, resolve_prices
from batchgen.preflight.facts import gather
from batchgen.spec.load import Spec
from batchgen.spec.matrix import expand

__all__ = ["check", "live_prices", "tasks_left"]


async def tasks_left(spec: Spec) -> tuple[dict[str, int], float]:
    """Tasks not done yet per model, and the job's spend so far (the higher of the
    estimate and what the service's usage counter measured), from the ledger if any."""
    done: frozenset[str] = frozenset()
    spent = 0.0
    if job_ledgers(spec):
        async with open_job(spec) as job:  # every shard's, read only
            done = await job.done_keys()
            for _, ledger in job.ledgers:
                estimated = (await ledger.totals())["spent"]
                measured = await ledger.get_meta(MEASURED_META)
                spent += max(estimated, float(measured)) if measured is not None else estimated
    left: Counter[str] = Counter(dict.fromkeys(spec.tasks_by_model, 0))
    # Counting only: a generated axis not locked yet still has its number of values.
    for task in expand(spec, counting=True):
        if task.key not in done:
            left[task.model] += 1
    return dict(left), spent


async def check(
    spec: Spec,
    *,
    base_url: str | None = None,
    auth: BearerAuth | PlaygroundAuth | None = None,
) -> Report:
    """Ask the service about ``spec`` and report whether the job can run as planned.

    ``auth`` defaults to the environment (``COBABA_API_KEY``). Raises ConfigError when
    there are no credentials; a refused key is in the report (``exit_code`` 3).
    """
    left, spent = await tasks_left(spec)
    async with CobabaClient(
        auth=auth or auth_from_env(), base_url=base_url or spec.base_url
    ) as client:
        facts = await gather(client, sorted(spec.tasks_by_model))
    return check_job(
        job=spec.name,
        currency=spec.currency,
        tasks_left_by_model=left,
        spec_prices=spec.price_overrides,
        budget=spec.limits.budget,
        spent=spent,
        facts=facts,
    )


async def live_prices(
    spec: Spec,
    *,
    base_url: str | None = None,
    auth: BearerAuth | PlaygroundAuth | None = None,
) -> tuple[Spec, list[str]]:
    """``spec`` with the prices a run would use (its own, else live, else the table),
    and what to tell the user (routes that did not answer, prices below the live ones)."""
    async with CobabaClient(
        auth=auth or auth_from_env(), base_url=base_url or spec.base_url
    ) as client:
        facts = await gather(client, sorted(spec.tasks_by_model), admin=False)
    choices, warnings = resolve_prices(
        spec.tasks_by_model, spec.price_overrides, facts, spec.currency
    )
    warnings = [f"{note}" for note in facts.notes] + warnings
    prices = {**spec.prices, **{m: c.price for m, c in choices.items()}}
    sources = {m: c.source for m, c in choices.items()}
    return dataclasses.replace(spec, prices=prices, price_sources=sources), warnings
