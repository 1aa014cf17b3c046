"""The preflight of ``batchgen run``: refuse what cannot work, price what will be paid.

Before a run touches its ledger, :func:`before_run` asks the service the preflight
questions (:func:`~batchgen.preflight.facts.gather`): a refused key ends the run
(nothing was written), a model of the spec that the key cannot use is refused before
anything is paid (:class:`~batchgen.errors.PreflightError`), and the prices the run
plans and budgets with are the spec's own, else the live ones, else the table's. The
balance the service reports becomes a ceiling of the budget, and the usage counter
read now is the baseline against which the budget measures what the run is charged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from batchgen.api.client import CobabaClient
from batchgen.errors import PreflightError
from batchgen.i18n import _
from batchgen.preflight.check import balance_of, resolve_prices
from batchgen.preflight.facts import Facts, gather
from batchgen.preflight.money import Money
from batchgen.spec.load import Spec

__all__ = ["Meter", "Prepared", "before_run", "usage_meter"]

#: Reads what the usage counter says now, in the spec's currency (raises when it cannot).
Meter = Callable[[], Awaitable[float]]


@dataclass(slots=True)
class Prepared:
    """What the preflight hands the run."""

    spec: Spec  # with the prices the run uses
    facts: Facts | None
    balance: float | None  # what the key can still spend, in the spec's currency
    usage: float | None  # the usage counter now, in the spec's currency
    meter: Meter | None
    messages: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (level, text)


def usage_meter(client: CobabaClient, money: Money) -> Meter:
    """Reads the key's usage counter in the spec's currency (raises when it cannot)."""

    async def read() -> float:
        usage = await client.billing_usage()
        value = money.from_display(usage.used)
        if value is None:
            raise PreflightError(
                f"the usage counter is in {money.display}, which does not convert to"
                f" {money.currency}"
            )
        return value

    return read


async def before_run(spec: Spec, client: CobabaClient, *, check: bool = True) -> Prepared:
    """Ask, refuse, price (see the module docstring); what the user should be told is
    in ``messages``. With ``check=False`` nothing is asked: the spec's and the table's
    prices stand, and the budget is held against the estimate only."""
    messages: list[tuple[str, str]] = []
    if not check:
        return Prepared(spec, None, None, None, None, messages)
    facts = await gather(client, sorted(spec.tasks_by_model))
    if facts.key_error is not None:
        raise facts.key_error
    for note in facts.notes:
        messages.append(("warning", f"preflight: {note}; going on without it"))
    if facts.models is not None:
        # The chat models of axes about to be generated are paid for too.
        wanted = {*spec.tasks_by_model, *(g.model for g in spec.unlocked)}
        missing = sorted(m for m in wanted if m not in facts.models)
        if missing:
            names = ", ".join(missing)
            raise PreflightError(
                _(
                    "model {models} is not available to this key (the service's /v1/models):"
                    " remove it from the spec, or run with --no-check to try anyway;"
                    " nothing was submitted"
                ).format(models=names),
                code="model_not_available",
            )
    choices, warnings = resolve_prices(
        spec.tasks_by_model, spec.price_overrides, facts, spec.currency
    )
    messages += [("warning", warning) for warning in warnings]
    for choice in choices.values():
        off = choice.difference
        if choice.source == "live" and off is not None and abs(off - 1) > 0.005:
            messages.append(
                (
                    "info",
                    f"price of {choice.model}: {choice.live:.4g} {spec.currency} live, the"
                    f" built-in table says {choice.table:g} (x{off:.2f}): using the live price",
                )
            )
    prices = {**spec.prices, **{m: c.price for m, c in choices.items()}}
    sources = {m: c.source for m, c in choices.items()}
    priced = dataclasses.replace(spec, prices=prices, price_sources=sources)
    money = Money(facts.status, spec.currency)
    balance, _source = balance_of(facts, money)
    usage = money.from_display(facts.usage.used) if facts.usage is not None else None
    meter = usage_meter(client, money) if usage is not None else None
    if meter is None:
        messages.append(
            (
                "warning",
                "the service's usage counter is not available: the budget is held against"
                " batchgen's estimate only",
            )
        )
    return Prepared(priced, facts, balance, usage, meter, messages)
