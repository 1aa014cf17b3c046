"""``python -m benchmarks``: every benchmark scenario of batchgen, printed as tables.

Starts the simulator (``batchgen sim``, a separate process) for each scenario, runs
batchgen in worker processes (and the hand-written peers beside it), prints one table
per scenario, writes every raw figure to ``benchmarks/results/<time>.json`` and the
tables with the machine to ``benchmarks/README.md`` (each scenario's section replaced,
the others and the hand-written notes kept; not for ``--quick`` unless ``--markdown``).

Scenarios (``--only a,b``): goodput, runner, latency, overhead, scale, peers, http,
gateway.
The full set takes about 70 minutes (the 60 rpm runs alone take 17 minutes, side by
side); ``--quick`` runs fewer tasks for development (its Markdown is marked quick).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import common, gateway, overhead, rate, scale
from benchmarks.report import ScenarioResult, update_markdown

SCENARIOS: dict[str, str] = {
    "goodput": "1. goodput at 600 and 60 rpm, Retry-After on/off, rate in the spec or not",
    "runner": "the runner issue's 300-task figure and the re-run that charges nothing",
    "latency": "2. latency-bound: latency 5 s, concurrency 50, no limit",
    "overhead": "3. client CPU per task, tasks per second, peak RSS at zero latency",
    "scale": "4. planning 1,000,000 tasks; a 100,000-task ledger: run and resume",
    "peers": "5. batchgen beside a hand-written gather+tenacity script and a 15 s pauser",
    "http": "6. httpx vs httpx2: client CPU per request at concurrency 1, 64, 256",
    "gateway": "7. the gateway's limiter (sliding log): 60/min, 6/min, polls counted",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer tasks (development)")
    parser.add_argument(
        "--only", default="", help="comma-separated scenarios: " + ", ".join(SCENARIOS)
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--http",
        choices=["httpx", "httpx2", "httpx+sniffio"],
        default="httpx2",
        help="HTTP stack batchgen runs on in scenarios 1-5 (%(default)s)",
    )
    parser.add_argument(
        "--stacks",
        default=",".join(overhead.STACKS),
        help="stacks compared by the http scenario (%(default)s; httpx+sniffio needs"
        " sniffio importable, see --sniffio-path)",
    )
    parser.add_argument(
        "--sniffio-path",
        metavar="DIR",
        help="a folder holding sniffio (pip install --target DIR sniffio), put on"
        " PYTHONPATH for the httpx+sniffio stack only",
    )
    parser.add_argument(
        "--peer-rpm",
        default="600",
        help="rates of the peers scenario, comma-separated (%(default)s; 60 adds ~20 min)",
    )
    parser.add_argument(
        "--serial",
        action="store_true",
        help="run the 60 rpm goodput runs one after another (about an hour more)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="Markdown to update (benchmarks/README.md; none for --quick unless given)",
    )
    parser.add_argument("--no-markdown", action="store_true", help="do not write Markdown")
    parser.add_argument(
        "--results",
        type=Path,
        default=common.ROOT / "benchmarks" / "results",
        help="folder of the raw JSON results (%(default)s)",
    )
    return parser


def _runners(ns: argparse.Namespace) -> dict[str, Callable[[], ScenarioResult]]:
    quick, http = ns.quick, ns.http
    peer_rates = [float(x) for x in ns.peer_rpm.split(",") if x.strip()]
    stacks = [s.strip() for s in ns.stacks.split(",") if s.strip()]
    return {
        "goodput": lambda: rate.goodput(quick=quick, parallel_slow=not ns.serial, http=http),
        "runner": lambda: rate.runner_issue(quick=quick, http=http),
        "latency": lambda: rate.latency(quick=quick, http=http),
        "overhead": lambda: overhead.overhead(quick=quick, http=http),
        "scale": lambda: scale.scale(quick=quick, http=http),
        "peers": lambda: rate.peers(quick=quick, rates=peer_rates, http=http),
        "http": lambda: overhead.http_stack(quick=quick, stacks=stacks),
        "gateway": lambda: gateway.gateway(quick=quick),
    }


def _goal_summary(results: Sequence[ScenarioResult], old: Path) -> str:
    """A Markdown list of every goal, this run's over the ones an earlier run recorded."""
    marker = "<!-- goals-json: "
    goals: dict[str, dict[str, object]] = {}
    if old.exists():
        for line in old.read_text().splitlines():
            if line.startswith(marker):
                goals = json.loads(line[len(marker) : -len(" -->")])
    for result in results:
        for name, ok in result.goals.items():
            goals[name] = {"ok": ok, "scenario": result.name, "quick": result.quick}
    lines = []
    for name, info in goals.items():
        state = "met" if info["ok"] else "**missed**"
        quick = " (quick run)" if info.get("quick") else ""
        lines.append(f"- {name}: {state} (scenario `{info['scenario']}`{quick})")
    lines.append(marker + json.dumps(goals, ensure_ascii=False) + " -->")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen scenarios; print tables; write JSON and Markdown. 0 if all ran."""
    ns = _parser().parse_args(argv)
    if ns.list:
        for name, text in SCENARIOS.items():
            print(f"{name:10s} {text}")
        return 0
    chosen = [s.strip() for s in ns.only.split(",") if s.strip()] or list(SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    if ns.sniffio_path:
        common.SNIFFIO_PATH.append(str(Path(ns.sniffio_path).resolve()))
    machine = common.machine_info()
    print(f"machine: {machine['uname']}")
    print(f"         {machine['nproc']} cores, {machine['cpu']}, Python {machine['python']}")
    print(f"load average at start: {machine['load']}", flush=True)
    if machine["load"][0] > 0.5:
        print("warning: the machine is busy (load > 0.5): timings will be noisy", flush=True)
    runners = _runners(ns)
    results: list[ScenarioResult] = []
    failures = 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in chosen:
        print(f"\n-- {name}: {SCENARIOS[name]}", flush=True)
        load_start = common.load_now()
        started = time.strftime("%Y-%m-%d %H:%M")
        t0 = time.monotonic()
        try:
            result = runners[name]()
        except common.WorkerError as exc:
            failures += 1
            print(f"scenario {name} failed: {exc}", file=sys.stderr, flush=True)
            continue
        result.seconds = time.monotonic() - t0
        result.load_start, result.load_end = load_start, common.load_now()
        result.started, result.quick = started, ns.quick
        results.append(result)
        print("\n" + result.text(), flush=True)
    ns.results.mkdir(parents=True, exist_ok=True)
    out = ns.results / f"{stamp}{'-quick' if ns.quick else ''}.json"
    out.write_text(
        json.dumps(
            {
                "machine": machine,
                "argv": list(argv or sys.argv[1:]),
                "scenarios": [r.as_dict() for r in results],
            },
            indent=1,
            default=str,
        )
    )
    print(f"\nraw results: {out}")
    markdown = ns.markdown
    if markdown is None and not ns.quick:
        markdown = common.ROOT / "benchmarks" / "README.md"
    if markdown is not None and not ns.no_markdown and results:
        summary = _goal_summary(results, markdown)
        update_markdown(markdown, machine, results, list(SCENARIOS), summary)
        print(f"markdown: {markdown}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
