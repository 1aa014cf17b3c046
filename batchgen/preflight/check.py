"""The job beside what the service said: can it run as planned, and at what cost?

:func:`check_job` puts a spec and its ledger (what is left to do) beside the
:class:`~batchgen.preflight.facts.Facts` and returns a :class:`Report`: the key, each
model (available to this key? its channel? its price live, in the table and in the
spec), the balance and the remaining cost, the budget. ``exit_code`` is 0 when the job
can run as planned, 1 when something would stop or skew it (a model the key cannot
use, a balance below the remaining cost, a budget below one image), 3 when the key is
refused. :func:`resolve_prices` is the same price decision the runner makes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.preflight.facts import Facts
from batchgen.preflight.money import LIVE, NONE, SPEC, TABLE, Money, PriceChoice, choose_group

__all__ = ["ModelLine", "Report", "balance_of", "check_job", "resolve_prices"]

EXIT_READY, EXIT_SKEWED, EXIT_REFUSED = 0, 1, 3


def resolve_prices(
    models: Iterable[str], spec_prices: Mapping[str, float], facts: Facts, currency: str
) -> tuple[dict[str, PriceChoice], list[str]]:
    """Each model's price: the spec's own ``prices`` (``spec_prices``: deliberate
    overrides), else the live price, else the built-in table. Returns the choices and
    the warnings to show (a spec price below the live one: the service charges that)."""
    money = Money(facts.status, currency)
    choices: dict[str, PriceChoice] = {}
    warnings: list[str] = []
    for model in sorted(set(models)):
        live = money.live_price(model, facts.pricing) if facts.pricing is not None else None
        table = DEFAULT_PRICES.get(model)
        own = spec_prices.get(model)
        if own is not None:
            price, source = own, SPEC
            if live is not None and own < live - 1e-9:
                warnings.append(
                    f"prices.{model} is {own:g} {currency}, below the service's live price"
                    f" {live:.4g}: it charges the live price (the budget is held against"
                    " what it really charges)"
                )
        elif live is not None:
            price, source = live, LIVE
        elif table is not None:
            price, source = table, TABLE
        else:
            price, source = 0.0, NONE
        choices[model] = PriceChoice(model, price, source, live=live, table=table, spec=own)
    return choices, warnings


@dataclass(slots=True)
class ModelLine:
    """One model of the job as the service sees it."""

    model: str
    tasks_left: int
    available: bool | None  # in /v1/models (None: not known)
    channel: bool | None  # getModelStatus (None: not known)
    price: PriceChoice


@dataclass(slots=True)
class Report:
    """What ``batchgen check`` prints (see the module docstring)."""

    job: str
    currency: str
    key: str  # accepted, refused, not checked
    models: list[ModelLine]
    balance: float | None
    balance_source: str
    remaining_cost: float
    tasks_left: int
    budget: float | None
    spent: float
    group: str | None
    display: str | None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    version: str | None = None

    @property
    def exit_code(self) -> int:
        """0 ready, 1 something would stop or skew the job, 3 the key is refused."""
        if self.key == "refused":
            return EXIT_REFUSED
        return EXIT_SKEWED if self.problems else EXIT_READY

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, with the exit code."""
        data = asdict(self)
        data["exit_code"] = self.exit_code
        return data

    def text(self) -> str:
        """The report for people: one line per model, then money, then what to do."""
        c = self.currency
        lines = [
            f"{self.job}: key {self.key}" + (f" (new-api {self.version})" if self.version else "")
        ]
        lines.append(
            f"  {'model':<26} {'left':>6}  {'for key':<8} {'channel':<8}"
            f" {'live':>9} {'table':>9} {'used':>9}  source"
        )
        for m in self.models:
            p = m.price
            lines.append(
                f"  {m.model:<26} {m.tasks_left:>6}  {_yes(m.available):<8} {_yes(m.channel):<8}"
                f" {_money(p.live):>9} {_money(p.table):>9} {_money(p.price):>9}  {p.source}"
                + (
                    f" (table x{p.difference:.2f})"
                    if p.difference and abs(p.difference - 1) > 0.005
                    else ""
                )
            )
        lines.append(
            f"  remaining: {self.tasks_left} task(s), {self.remaining_cost:.4f} {c}; spent so far"
            f" {self.spent:.4f} {c}"
        )
        if self.balance is not None:
            lines.append(f"  balance: {self.balance:.4f} {c} ({self.balance_source})")
        else:
            lines.append(f"  balance: not known ({self.balance_source})")
        if self.budget is not None:
            lines.append(f"  budget: {self.budget:g} {c}")
        if self.group:
            lines.append(f"  prices for group {self.group}, shown in {self.display or '?'}")
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  problem: {p}" for p in self.problems]
        verdict = {
            EXIT_READY: "ready: the job can run as planned",
            EXIT_SKEWED: "not ready: fix the problems above (or run anyway with --no-check)",
            EXIT_REFUSED: "the key is refused: check COBABA_API_KEY",
        }[self.exit_code]
        lines.append(f"  {verdict}")
        return "\n".join(lines)


def _yes(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "NO")


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def check_job(
    *,
    job: str,
    currency: str,
    tasks_left_by_model: Mapping[str, int],
    spec_prices: Mapping[str, float],
    budget: float | None,
    spent: float,
    facts: Facts,
) -> Report:
    """Compare the job (its tasks left per model, prices, budget, spend) with ``facts``."""
    money = Money(facts.status, currency)
    choices, warnings = resolve_prices(tasks_left_by_model, spec_prices, facts, currency)
    problems: list[str] = []
    if facts.notes and not facts.answered:
        causes = sorted({note.problem for note in facts.notes})
        problems.append(f"the service answered no preflight route ({'; '.join(causes)})")
    else:
        warnings += [f"{note} (checked without it)" for note in facts.notes]
    if facts.status is None:
        warnings.append(f"the site's display unit is not known: amounts taken as {currency}")
    lines: list[ModelLine] = []
    for model in sorted(tasks_left_by_model):
        left = tasks_left_by_model[model]
        available = None if facts.models is None else model in facts.models
        status = facts.model_status.get(model)
        channel = None if status is None else status.available
        if available is False:
            problems.append(f"model {model} is not available to this key (/v1/models)")
        if channel is False and left:
            problems.append(f"model {model} has no channel right now (getModelStatus)")
        if choices[model].source == NONE and left:
            warnings.append(f"model {model} has no price anywhere: planned as free")
        lines.append(ModelLine(model, left, available, channel, choices[model]))
    remaining = sum(choices[m].price * n for m, n in tasks_left_by_model.items())
    tasks_left = sum(tasks_left_by_model.values())
    balance, source = balance_of(facts, money)
    if balance is not None and remaining > balance + 1e-9:
        problems.append(
            f"the balance ({balance:.4f} {currency}) is below the job's remaining cost"
            f" ({remaining:.4f} {currency}): the run would stop part-way"
        )
    priced = [choices[m].price for m, n in tasks_left_by_model.items() if n and choices[m].price]
    if budget is not None and priced and budget - spent < min(priced) - 1e-9:
        problems.append(
            f"limits.budget ({budget:g} {currency}) leaves {max(0.0, budget - spent):.4f}, less"
            f" than one image ({min(priced):.4f}): nothing would be submitted"
        )
    key = {True: "accepted", False: "refused", None: "not checked"}[facts.key_accepted]
    return Report(
        job=job,
        currency=currency,
        key=key,
        models=lines,
        balance=balance,
        balance_source=source,
        remaining_cost=round(remaining, 6),
        tasks_left=tasks_left,
        budget=budget,
        spent=round(spent, 6),
        group=choose_group(facts.pricing) if facts.pricing is not None else None,
        display=money.display,
        problems=problems,
        warnings=warnings,
        version=facts.server_version,
    )


def balance_of(facts: Facts, money: Money) -> tuple[float | None, str]:
    """What the key can still spend, in the spec's currency, and where that came from."""
    sub, usage = facts.subscription, facts.usage
    if sub is not None and not sub.unlimited and usage is not None:
        left = money.from_display(max(0.0, sub.hard_limit - usage.used))
        if left is not None:
            return left, "the key's quota less its usage"
    if facts.credits is not None:
        credits = money.from_display(facts.credits.credits)
        if credits is not None:
            return credits, "getCredits"
    if sub is not None and sub.unlimited:
        return None, "the key has no quota of its own and the account balance is not shown to it"
    return None, "the billing routes did not answer"
