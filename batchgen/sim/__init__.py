"""batchgen.sim: a local simulator of the CobabaAi API, served over real HTTP.

It behaves like the service the runner talks to (task latency, per-key rate limits,
failures and moderation, refunds, expiring result URLs, billing) and can produce
every protocol variant ``protocol.md`` asks clients to accept, so tests, the demo,
benchmarks and users' dry runs exercise the same code paths as production.

Use it in-process::

    async with running_simulator(SimConfig(latency=0.05)) as sim:
        ...  # talk to sim.base_url with key "sk-sim"; read sim.stats()

or from the shell with ``batchgen sim --port 8787``. ``gateway_profile()`` (and
``batchgen sim --profile gateway``) makes it answer like the real gateway underneath
the service, new-api: its rate limiter and its error bodies.
"""

from __future__ import annotations

from batchgen.sim.app import SimApp, create_app
from batchgen.sim.config import SimConfig, gateway_profile
from batchgen.sim.server import SimServer, running_simulator, serve
from batchgen.sim.state import SimState

__all__ = [
    "SimApp",
    "SimConfig",
    "SimServer",
    "SimState",
    "create_app",
    "gateway_profile",
    "running_simulator",
    "serve",
]
