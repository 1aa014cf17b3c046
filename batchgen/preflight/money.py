"""Money as the service shows it, in the spec's currency: live prices and amounts.

The gateway prices a per-call model at ``model_price`` USD times the key's group ratio,
and shows money in its display unit (CNY here, at ``usd_exchange_rate`` CNY a dollar;
or USD; or raw quota, ``quota_per_unit`` of it a dollar). The spec's prices and budget
are in its ``currency``. :class:`Money` converts between them when it can (CNY and
USD), and says it cannot otherwise, so a price is never compared across units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from batchgen.api.dashboard import Pricing, SiteStatus

__all__ = ["DEFAULT_GROUP", "Money", "PriceChoice", "choose_group"]

#: The group a key is in when nothing says otherwise (a key cannot see its own group).
DEFAULT_GROUP: Final = "default"

#: Where a price came from, in the order they are preferred.
SPEC, LIVE, TABLE, NONE = "spec", "live", "table", "none"


@dataclass(frozen=True, slots=True)
class PriceChoice:
    """The price a model is planned and budgeted at, and the others beside it."""

    model: str
    price: float
    source: str  # spec, live, table or none
    live: float | None = None
    table: float | None = None
    spec: float | None = None

    @property
    def difference(self) -> float | None:
        """How far the table is from the live price, as a ratio (1.0: the same)."""
        if self.live is None or not self.table:
            return None
        return self.live / self.table


def choose_group(pricing: Pricing) -> str:
    """The group whose ratio applies: ``default`` when the site has one, else the only
    group there is; a key cannot see which group it is in."""
    if DEFAULT_GROUP in pricing.group_ratio or not pricing.group_ratio:
        return DEFAULT_GROUP
    if len(pricing.group_ratio) == 1:
        return next(iter(pricing.group_ratio))
    return DEFAULT_GROUP


class Money:
    """Converts the site's amounts into ``currency`` (the spec's), when it can."""

    def __init__(self, status: SiteStatus | None, currency: str) -> None:
        self.status = status
        self.currency = currency.upper()

    @property
    def display(self) -> str | None:
        """The site's display unit, when known."""
        return self.status.display if self.status is not None else None

    def from_usd(self, amount: float) -> float | None:
        """``amount`` dollars in the spec's currency, or None when it cannot say."""
        if self.currency == "USD":
            return amount
        if self.currency == "CNY" and self.status is not None:
            return amount * self.status.usd_exchange_rate
        return None

    def from_display(self, amount: float) -> float | None:
        """``amount`` in the site's display unit, in the spec's currency (or None).

        Without the site's status the display unit is taken to be the spec's currency
        (the caller says so to the user).
        """
        display = self.display
        if display is None or display == self.currency:
            return amount
        status = self.status
        assert status is not None
        if display == "USD":
            return self.from_usd(amount)
        if display == "CNY" and status.usd_exchange_rate > 0:
            return self.from_usd(amount / status.usd_exchange_rate)
        if display == "TOKENS" and status.quota_per_unit > 0:
            return self.from_usd(amount / status.quota_per_unit)
        return None

    def live_price(self, model: str, pricing: Pricing) -> float | None:
        """The service's price of one image of ``model`` in the spec's currency: its
        ``model_price`` x the group ratio, converted; None when it has no per-call price
        (or none that converts)."""
        entry = pricing.models.get(model)
        if entry is None or not entry.per_call:
            return None
        ratio = pricing.group_ratio.get(choose_group(pricing), 1.0)
        return self.from_usd(entry.model_price * ratio)
