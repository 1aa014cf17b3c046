"""The script a user writes by hand: asyncio.gather over a semaphore, tenacity on 429.

It submits every task of the job (``batchgen plan --json`` output, one task per line),
polls each once a second until it ends, and downloads its images. A 429 on submission
is retried by tenacity with random exponential backoff (1 to 60 s, the pattern the
OpenAI cookbook recommends); ``Retry-After`` is not read. At most ``--concurrency``
tasks are in progress at once (submit, poll and download inside the semaphore).

    python benchmarks/peers/gather_tenacity.py --base-url URL --key KEY \\
        --tasks tasks.jsonl --out DIR [--concurrency 50]

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
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)


class RateLimited(Exception):
    """The service answered 429."""


class Counters:
    """What the script saw."""

    def __init__(self) -> None:
        self.rate_limited = 0
        self.requests = 0
        self.done = 0
        self.failed = 0


async def submit(client: httpx.AsyncClient, body: dict[str, Any], seen: Counters) -> str:
    """POST the task; its id. Retries 429s with tenacity."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(RateLimited),
        wait=wait_random_exponential(multiplier=1, min=1, max=60),
        stop=stop_after_attempt(20),
        reraise=True,
    ):
        with attempt:
            seen.requests += 1
            response = await client.post("/api/generate", json=body)
            if response.status_code == 429:
                seen.rate_limited += 1
                raise RateLimited
            response.raise_for_status()
            answer = response.json()
            task_id: str = answer.get("id") or answer["data"]["id"]
            return task_id
    raise AssertionError("unreachable: tenacity reraises")


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
                    task_id = await submit(api, task["request"], seen)
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
    result = asyncio.run(main(parser.parse_args(argv)))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
