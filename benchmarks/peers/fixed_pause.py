"""The hand-written script with a fixed pause on every 429, as parallel processors do.

The same as ``gather_tenacity.py`` (asyncio.gather over a semaphore, a poll loop once
a second, downloads), but a 429 is handled the way popular parallel request
processors handle it: every worker pauses until 15 s after the last 429 seen, then
tries again. ``Retry-After`` is not read.

    python benchmarks/peers/fixed_pause.py --base-url URL --key KEY \\
        --tasks tasks.jsonl --out DIR [--concurrency 50] [--pause 15]

Prints one JSON line: makespan, tasks done and failed, 429s seen, requests sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

MAX_ATTEMPTS = 20


class Counters:
    """What the script saw, and the time of the last 429."""

    def __init__(self) -> None:
        self.rate_limited = 0
        self.requests = 0
        self.done = 0
        self.failed = 0
        self.last_429 = float("-inf")


async def submit(
    client: httpx.AsyncClient, body: dict[str, Any], seen: Counters, pause: float
) -> str:
    """POST the task; its id. After a 429 anywhere, wait until ``pause`` s after it."""
    for _ in range(MAX_ATTEMPTS):
        wait = seen.last_429 + pause - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        seen.requests += 1
        response = await client.post("/api/generate", json=body)
        if response.status_code == 429:
            seen.rate_limited += 1
            seen.last_429 = time.monotonic()
            continue
        response.raise_for_status()
        answer = response.json()
        task_id: str = answer.get("id") or answer["data"]["id"]
        return task_id
    raise RuntimeError(f"still rate limited after {MAX_ATTEMPTS} attempts")


async def wait_for(client: httpx.AsyncClient, task_id: str, seen: Counters) -> list[str]:
    """Poll once a second until the task ends; its image URLs."""
    while True:
        await asyncio.sleep(1.0)
        seen.requests += 1
        response = await client.post("/draw/result", json={"id": task_id})
        response.raise_for_status()
        data = response.json()["data"]
        status = str(data["status"]).lower()
        if status in ("succeeded", "success"):
            return [r["url"] for r in data.get("results") or [] if r.get("url")]
        if status == "failed":
            raise RuntimeError(f"task {task_id} failed: {data.get('failure_reason')}")


async def download(client: httpx.AsyncClient, url: str, dest: Path, seen: Counters) -> None:
    """GET the image and write it."""
    seen.requests += 1
    response = await client.get(url)
    response.raise_for_status()
    dest.write_bytes(response.content)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole job."""
    tasks = [json.loads(line) for line in Path(args.tasks).read_text().splitlines() if line]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seen = Counters()
    semaphore = asyncio.Semaphore(args.concurrency)
    headers = {"Authorization": f"Bearer {args.key}"}
    started = time.perf_counter()
    async with (
        httpx.AsyncClient(base_url=args.base_url, headers=headers, timeout=60) as api,
        httpx.AsyncClient(timeout=120) as files,
    ):

        async def one(task: dict[str, Any]) -> None:
            async with semaphore:
                try:
                    task_id = await submit(api, task["request"], seen, args.pause)
                    urls = await wait_for(api, task_id, seen)
                    for i, url in enumerate(urls):
                        await download(files, url, out / f"{task['key']}-{i}.png", seen)
                    seen.done += 1
                except Exception as exc:
                    seen.failed += 1
                    print(f"task {task['key']}: {exc!r}", file=sys.stderr)

        await asyncio.gather(*(one(t) for t in tasks))
    return {
        "makespan": round(time.perf_counter() - started, 3),
        "tasks": len(tasks),
        "done": seen.done,
        "failed": seen.failed,
        "rate_limited_seen": seen.rate_limited,
        "requests": seen.requests,
    }


def cli(argv: list[str] | None = None) -> int:
    """Parse the options, run, print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--tasks", required=True, help="batchgen plan --json output")
    parser.add_argument("--out", required=True)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--pause", type=float, default=15.0, help="seconds after a 429")
    result = asyncio.run(main(parser.parse_args(argv)))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
