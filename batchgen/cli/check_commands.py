"""``batchgen check``: ask the service before paying, print what it said.

The report comes from :func:`batchgen.preflight.job.check`; this module prints it (text
or JSON) and exits with its code: 0 ready, 1 something would stop or skew the job, 3
the key is refused. ``--sim`` asks a simulator started for the purpose.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import anyio

from batchgen.cli.args import load_spec_arg

__all__ = ["cmd_check", "live_spec"]


def cmd_check(args: argparse.Namespace) -> int:
    """Print the preflight report of the job; exit with its code."""
    spec = load_spec_arg(args)
    report = anyio.run(_check, spec, args, backend="asyncio")
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        print(report.text())
    return int(report.exit_code)


async def _check(spec: Any, args: argparse.Namespace) -> Any:
    from batchgen.preflight.job import check

    if args.sim:
        from batchgen.runner.job import sim_session

        async with sim_session(profile=args.sim_profile, seed=0) as (base_url, auth):
            return await check(spec, base_url=base_url, auth=auth)
    return await check(spec, base_url=args.base_url)


def live_spec(spec: Any, args: argparse.Namespace) -> tuple[Any, list[str]]:
    """``spec`` priced as a run would price it (``plan --live``), and the notes to show."""
    from batchgen.preflight.job import live_prices

    async def price() -> tuple[Any, list[str]]:
        if args.sim:
            from batchgen.runner.job import sim_session

            async with sim_session(profile=args.sim_profile, seed=0) as (base_url, auth):
                return await live_prices(spec, base_url=base_url, auth=auth)
        return await live_prices(spec, base_url=args.base_url)

    return anyio.run(price, backend="asyncio")
