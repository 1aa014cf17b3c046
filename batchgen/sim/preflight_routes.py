"""The gateway's preflight routes, answered from the simulator's own state.

What an ``sk-`` token can ask before a run, in new-api's shapes (``protocol.md``,
"Preflight routes"): ``GET /v1/models`` (the models this key may use),
``/v1/dashboard/billing/subscription`` (its quota) and ``/v1/dashboard/billing/usage``
(what it has been charged, net of refunds), and the public ``/api/status`` and
``/api/pricing`` (USD prices that the gateway's charge formula turns back into the
simulator's prices, see :mod:`.preflight`).

None of them passes the model limiter or the buckets. ``/api/*`` and the billing routes
pass the gateway's per-IP limit instead (:class:`DashboardLimit`: ``dashboard_limit``
requests per 180 s, a bare 429 past it), checked before the key, as new-api's
middleware does. A route named in ``hidden_routes`` answers the app's own 404, as if
the gateway did not have it. :meth:`PreflightRoutes.table` gives the app its rows.
"""

from __future__ import annotations

from batchgen.sim.limits import SlidingLog
from batchgen.sim.preflight import DASHBOARD_WINDOW, group_ratio, usd_price
from batchgen.sim.service import Handler, RouteGroup, Service
from batchgen.sim.wire import Reply, Request

__all__ = [
    "CHAT_MODEL",
    "MODEL_CREATED",
    "SYSTEM_NAME",
    "UNLIMITED_QUOTA",
    "DashboardLimit",
    "PreflightRoutes",
]

#: The chat model the simulator serves (``/v1/chat/completions`` answers any model with
#: a channel; this is the one it lists).
CHAT_MODEL = "gemini-3.1-pro-preview"
#: ``created`` of every model in ``/v1/models`` (new-api's constant).
MODEL_CREATED = 1626777600
#: What the subscription route reports for a key without a quota.
UNLIMITED_QUOTA = 100000000
#: ``system_name`` of ``/api/status``.
SYSTEM_NAME = "CobabaAi (simulator)"

_IMAGE_ENDPOINTS = ("image-generation",)
_CHAT_ENDPOINTS = ("openai",)
_BILLING_ERROR = {
    "message": "record not found (simulated billing error)",
    "type": "new_api_error",
    "code": "billing_error",
}


class DashboardLimit:
    """new-api's per-IP limit of ``/api/*`` and the billing routes, as in memory mode.

    One :class:`~batchgen.sim.limits.SlidingLog` per client IP: a request is let by
    while fewer than N were let by in the last 180 s, and recorded when it is let by,
    whatever its answer; a refused request is not recorded.
    """

    __slots__ = ("_logs",)

    def __init__(self) -> None:
        self._logs: dict[str, SlidingLog] = {}

    def admit(self, ip: str, limit: int, now: float) -> bool:
        """Whether a request from ``ip`` at ``now`` may go ahead (0 = no limit)."""
        if limit <= 0:
            return True
        log = self._logs.get(ip)
        if log is None:
            log = self._logs[ip] = SlidingLog()
        if not log.allows(limit, DASHBOARD_WINDOW, now):
            return False
        log.record(limit, now)
        return True


class PreflightRoutes(RouteGroup):
    """Handlers of the preflight routes; ``not_found`` is the app's answer to unknown paths."""

    def __init__(self, service: Service, not_found: Handler) -> None:
        super().__init__(service)
        self._not_found = not_found
        self._dashboard = DashboardLimit()

    def table(self) -> dict[str, dict[str, Handler]]:
        """The app's route rows of the preflight routes, each behind its guard."""
        route = self._guarded
        return {
            "/v1/models": {"GET": route("models", self.models)},
            "/v1/dashboard/billing/subscription": {
                "GET": route("subscription", self.subscription, dashboard=True)
            },
            "/v1/dashboard/billing/usage": {"GET": route("usage", self.usage, dashboard=True)},
            "/api/status": {"GET": route("status", self.status, dashboard=True)},
            "/api/pricing": {"GET": route("pricing", self.pricing, dashboard=True)},
        }

    def _guarded(self, name: str, handler: Handler, *, dashboard: bool = False) -> Handler:
        """``handler`` unless ``name`` is hidden (404), behind the per-IP limit if
        ``dashboard`` (a bare 429, counted with every other 429)."""

        async def guarded(req: Request) -> None:
            cfg = self.config
            if name in cfg.hidden_routes:
                await self._not_found(req)
                return
            if dashboard and not self._dashboard.admit(
                req.client, cfg.dashboard_limit, self.state.now()
            ):
                self.state.counters.rate_limited += 1
                raise Reply(429)
            await handler(req)

        return guarded

    # --- token routes ------------------------------------------------------------------

    async def models(self, req: Request) -> None:
        """The models this key may use: priced or unpriced ones and the chat model, minus
        ``forbid`` (``down`` and ``unpriced`` ones are listed: they fail when used)."""
        self.service.key_account(req)
        cfg = self.config
        names = {*cfg.prices, *cfg.unpriced, CHAT_MODEL}.difference(cfg.forbid)
        data = [
            {
                "id": name,
                "object": "model",
                "created": MODEL_CREATED,
                "owned_by": "custom",
                "supported_endpoint_types": list(
                    _CHAT_ENDPOINTS if name == CHAT_MODEL else _IMAGE_ENDPOINTS
                ),
            }
            for name in sorted(names)
        ]
        await req.respond(200, {"success": True, "object": "list", "data": data})

    async def subscription(self, req: Request) -> None:
        """The key's quota (used + remaining, in the display unit), or 100000000."""
        self.service.key_account(req)
        if self.config.billing_error:
            await req.respond(200, {"error": dict(_BILLING_ERROR)})
            return
        quota = self.config.token_quota
        amount: float = UNLIMITED_QUOTA if quota is None else round(quota, 6)
        await req.respond(
            200,
            {
                "object": "billing_subscription",
                "has_payment_method": True,
                "soft_limit_usd": amount,
                "hard_limit_usd": amount,
                "system_hard_limit_usd": amount,
                "access_until": 0,
            },
        )

    async def usage(self, req: Request) -> None:
        """100 x what the key has been charged, net of the refunds settled by now."""
        account = self.service.key_account(req)
        if self.config.billing_error:
            await req.respond(200, {"error": dict(_BILLING_ERROR)})
            return
        self.state.settle()
        total = round(100 * account.spent, 6) or 0.0  # never -0.0
        await req.respond(200, {"object": "list", "total_usage": total})

    # --- public routes -----------------------------------------------------------------

    async def status(self, req: Request) -> None:
        """The site's units: quota per USD, display unit, exchange rate, version."""
        cfg = self.config
        data = {
            "quota_per_unit": cfg.quota_per_unit,
            "quota_display_type": cfg.display_currency,
            "usd_exchange_rate": cfg.usd_exchange_rate,
            "display_in_currency": True,
            "version": cfg.api_version,
            "system_name": SYSTEM_NAME,
        }
        await req.respond(200, {"success": True, "message": "", "data": data})

    async def pricing(self, req: Request) -> None:
        """Every priced model (not ``unpriced`` ones) at a fixed USD price per call."""
        cfg = self.config
        data = [
            {
                "model_name": model,
                "quota_type": 1,
                "model_price": usd_price(price, cfg),
                "model_ratio": 0,
                "completion_ratio": 0,
                "enable_groups": [cfg.group],
            }
            for model, price in sorted(cfg.prices.items())
            if model not in cfg.unpriced
        ]
        ratios = {**cfg.group_ratios, cfg.group: group_ratio(cfg)}
        usable = {g: "默认分组" if g == "default" else f"{g}分组" for g in ratios}
        await req.respond(
            200, {"success": True, "data": data, "group_ratio": ratios, "usable_group": usable}
        )
