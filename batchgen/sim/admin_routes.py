"""The simulator's admin routes (host root) and its own ``/_sim/*`` control routes.

``/client/common/getCredits`` (the key's balance, the key in the query) and
``/client/common/getModelStatus`` as the service has them; ``/_sim/config`` (read and
change the live config), ``/_sim/stats``, ``/_sim/tasks`` and ``/_sim/redirect`` (a
302 to any URL, for the downloader's tests) belong to the simulator alone.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from batchgen.sim.service import RouteGroup
from batchgen.sim.wire import Request, bad_request, error

__all__ = ["AdminRoutes"]


class AdminRoutes(RouteGroup):
    """Handlers of the admin and control routes; each signs in (or not) by itself."""

    # --- dashboard routes --------------------------------------------------------------

    async def credits(self, req: Request) -> None:
        key = parse_qs(req.query.decode("latin-1")).get("apikey", [""])[0]
        if key not in self.config.keys:
            raise error(401, "invalid_api_key", "无效的令牌 (invalid or revoked API key)")
        balance = round(self.state.balance(key), 6)
        await req.respond(200, {"code": 0, "data": {"credits": balance}})

    async def model_status(self, req: Request) -> None:
        self.service.key_of(req)
        model = parse_qs(req.query.decode("latin-1")).get("model", [""])[0]
        if not model:
            raise bad_request("model is required")
        ok = self.state.price_of(model) is not None
        data = {"status": ok, "error": "" if ok else "model_not_found"}
        await req.respond(200, {"code": 0, "data": data})

    # --- simulator control -------------------------------------------------------------

    async def get_config(self, req: Request) -> None:
        await req.respond(200, self.config.to_json())

    async def set_config(self, req: Request) -> None:
        changes = await req.json_object()
        try:
            self.config.update(changes)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        if "seed" in changes:
            self.state.rng.seed(self.config.seed)
        await req.respond(200, self.config.to_json())

    async def stats(self, req: Request) -> None:
        await req.respond(200, self.state.stats())

    async def tasks(self, req: Request) -> None:
        await req.respond(200, self.state.task_rows())

    async def redirect(self, req: Request) -> None:
        target = parse_qs(req.query.decode("latin-1")).get("to", [""])[0]
        if not target:
            raise bad_request("to is required")
        await req.respond(302, b"", [(b"location", target.encode())])
