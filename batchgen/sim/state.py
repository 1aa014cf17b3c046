"""The simulator's memory: accounts, their limits, tasks, billing and counters.

Pure logic with an injectable clock, so every rule here is testable without HTTP.
Nothing runs in the background: a task's status is a function of the clock (it is
``running`` until ``ends``), and the ledger effects of a task ending (the status
counters, the refund of a failed task) are applied lazily by :meth:`SimState.settle`,
which pops ended tasks off a heap ordered by end time. That keeps 100,000+ tasks cheap:
one slotted object and one heap entry each, no timers.

All randomness (task ids, jitter, fault draws) comes from one ``random.Random(seed)``,
and a draw is made only when its probability is strictly between 0 and 1, so the
sequence of ids does not depend on how often a client polls.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random

from batchgen.sim.config import SimConfig
from batchgen.sim.gateway import request_id as gateway_request_id
from batchgen.sim.limits import GatewayLimits, TokenBucket
from batchgen.sim.markers import parse_markers

__all__ = [
    "Account",
    "Counters",
    "InsufficientCredits",
    "InsufficientTokenQuota",
    "SimState",
    "Task",
    "TaskView",
    "TokenBucket",
    "parse_markers",
]

#: Canonical statuses, as ``/_sim/tasks`` and the stats report them.
RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
MODERATION = ("output_moderation", "input_moderation")

_SIZE_FACTOR = {"2K": 1.25, "4K": 1.5}
_FAILURE_TEXT = {
    "error": "生成失败 (image generation failed upstream)",
    "output_moderation": "输出内容违规 (output blocked by moderation)",
    "input_moderation": "输入内容违规 (prompt blocked by moderation)",
}


class InsufficientCredits(Exception):
    """The account's balance cannot pay for the submission; nothing was charged."""

    def __init__(self, balance: float, cost: float) -> None:
        self.balance = balance
        self.cost = cost
        super().__init__(f"balance {balance:.6f} cannot pay {cost:.6f}")


class InsufficientTokenQuota(Exception):
    """What is left of the key's ``token_quota`` cannot pay; nothing was charged."""

    def __init__(self, left: float, cost: float) -> None:
        self.left = left
        self.cost = cost
        super().__init__(f"token quota left {left:.6f} cannot pay {cost:.6f}")


@dataclass(slots=True, eq=False)
class Account:
    """One payer: an API key or a playground user. ``label`` never contains the key.

    ``spent`` is what its token has spent (charges minus refunds, for ``token_quota``);
    ``token`` is False for a playground user, whom no token quota limits.
    """

    label: str
    balance: float
    charges: int = 0
    spent: float = 0.0
    token: bool = True
    submit_bucket: TokenBucket | None = None
    poll_bucket: TokenBucket | None = None
    limits: GatewayLimits | None = None


@dataclass(slots=True, eq=False)
class Task:
    """One accepted submission. Its status is derived from the clock, never stored.

    ``failure`` is ``""`` for a task that succeeds, else its ``failure_reason``.
    ``size`` is the image size actually honoured (1K for families that ignore it).
    """

    id: str
    account: Account
    model: str
    prompt: str
    aspect: str
    size: str
    images: int
    created: float
    ends: float
    failure: str
    charged: float
    pollable: bool
    unified: bool
    refunded: float = 0.0
    served: list[str] | None = None

    def record_served(self, sha256: str) -> None:
        """Remember that an image with this digest was served completely (once per digest)."""
        if self.served is None:
            self.served = [sha256]
        elif sha256 not in self.served:
            self.served.append(sha256)


@dataclass(frozen=True, slots=True)
class TaskView:
    """A task as seen at one instant: canonical status, progress, failure and its text."""

    status: str
    progress: int
    failure_reason: str
    error: str

    @property
    def terminal(self) -> bool:
        """Whether the task has ended (it will not change any more)."""
        return self.status != RUNNING


@dataclass(slots=True)
class Counters:
    """Event counts reported by ``/_sim/stats``."""

    submissions_charged: int = 0
    submissions_dropped: int = 0
    rate_limited: int = 0
    rate_limited_by_route: dict[str, int] = field(default_factory=dict)
    busy_injected: int = 0
    errors_injected: int = 0
    polls_hung: int = 0
    downloads: int = 0
    downloads_truncated: int = 0
    downloads_oversize: int = 0
    downloads_expired: int = 0
    downloads_with_credentials: int = 0
    charged_total: float = 0.0
    refunded_total: float = 0.0
    chat_answers: int = 0  # chat answers charged (by token), and what they cost
    chat_charged: float = 0.0
    requests_by_route: dict[str, int] = field(default_factory=dict)
    tasks_by_status: dict[str, int] = field(
        default_factory=lambda: {RUNNING: 0, SUCCEEDED: 0, FAILED: 0}
    )


class SimState:
    """Accounts, tasks, billing and counters of one simulator.

    ``config`` is read live at every call. ``clock`` is a monotonic clock in seconds;
    wall-clock times (``created``) are derived from it so one fake clock drives all.
    """

    def __init__(self, config: SimConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.rng = Random(config.seed)
        self.counters = Counters()
        self.tasks: dict[str, Task] = {}
        self._t0 = clock()
        self._epoch = time.time()
        self._accounts: dict[str, Account] = {}
        self._labels: set[str] = set()
        self._pending: list[tuple[float, int, Task]] = []  # heap of running tasks by end
        self._seq = itertools.count()
        self._request_seq = itertools.count(1)
        self._request_salt = hashlib.blake2b(f"sim:{config.seed}".encode(), digest_size=8).digest()

    # --- time and randomness ---------------------------------------------------------

    def now(self) -> float:
        """The simulator's clock, in seconds."""
        return self.clock()

    def wall(self, t: float | None = None) -> float:
        """The Unix time of clock reading ``t`` (default: now)."""
        return self._epoch + ((self.clock() if t is None else t) - self._t0)

    def roll(self, probability: float) -> bool:
        """True with ``probability``; draws from the RNG only when it is strictly in (0, 1)."""
        if probability <= 0.0:
            return False
        if probability >= 1.0:
            return True
        return self.rng.random() < probability

    def next_request_id(self) -> str:
        """A request id for ``X-Oneapi-Request-Id``: seeded, sequential, RNG-independent.

        ``sim`` + the sequence number + a seeded digest; with ``wire="gateway"`` the
        gateway's form (UTC time to the nanosecond, from :meth:`wall`, + 16 seeded
        alphanumerics).
        """
        n = next(self._request_seq).to_bytes(8, "big")
        if self.config.wire == "gateway":
            entropy = hashlib.blake2b(n, digest_size=16, key=self._request_salt).digest()
            return gateway_request_id(self.wall(), entropy)
        digest = hashlib.blake2b(n, digest_size=6, key=self._request_salt)
        return f"sim{int.from_bytes(n, 'big'):010d}{digest.hexdigest()}"

    def count_request(self, route: str) -> None:
        """Count one request of ``route`` (e.g. ``"POST /v1/draw/result"``)."""
        by_route = self.counters.requests_by_route
        by_route[route] = by_route.get(route, 0) + 1

    def count_rate_limited(self, route: str) -> None:
        """Count one 429 answered on ``route``."""
        by_route = self.counters.rate_limited_by_route
        by_route[route] = by_route.get(route, 0) + 1

    # --- accounts and limits -----------------------------------------------------------

    def account_for_key(self, key: str) -> Account:
        """The account of API key ``key`` (created at first use, labelled ``key#N``).

        N is the key's position in ``config.keys`` when first seen, or the next free
        number, so labels are stable and never reveal the key.
        """
        account = self._accounts.get(key)
        if account is None:
            keys = self.config.keys
            n = keys.index(key) + 1 if key in keys else 1
            while f"key#{n}" in self._labels:
                n += 1
            account = self._new_account(key, f"key#{n}")
        return account

    def knows_key(self, key: str) -> bool:
        """Whether ``key`` has been used successfully before (so refusing it is a revocation)."""
        return key in self._accounts

    def account_for_user(self, user_id: str) -> Account:
        """The account of playground user ``user_id`` (labelled ``user:ID``)."""
        slot = "\0user:" + user_id  # cannot collide with an API key
        account = self._accounts.get(slot)
        if account is None:
            account = self._new_account(slot, f"user:{user_id}", token=False)
        return account

    def _new_account(self, slot: str, label: str, *, token: bool = True) -> Account:
        account = Account(label=label, balance=self.config.credits, token=token)
        self._accounts[slot] = account
        self._labels.add(label)
        return account

    def take_submit_token(self, account: Account) -> float:
        """0.0 if the submission may go ahead, else seconds until the bucket allows one."""
        rpm = self.config.rpm
        if rpm <= 0:
            return 0.0
        capacity = self.config.effective_burst()
        now = self.clock()
        if account.submit_bucket is None:
            account.submit_bucket = TokenBucket(capacity, now)
        return account.submit_bucket.take(rpm / 60.0, capacity, now)

    def take_poll_token(self, account: Account) -> float:
        """As :meth:`take_submit_token`, for the separate poll bucket (``poll_rpm``)."""
        rpm = self.config.poll_rpm
        if rpm <= 0:
            return 0.0
        capacity = max(1.0, rpm / 60.0)
        now = self.clock()
        if account.poll_bucket is None:
            account.poll_bucket = TokenBucket(capacity, now)
        return account.poll_bucket.take(rpm / 60.0, capacity, now)

    def token_left(self, account: Account) -> float | None:
        """What ``account``'s token may still spend, or None when no quota limits it."""
        quota = self.config.token_quota
        if quota is None or not account.token:
            return None
        self.settle()
        return quota - account.spent

    def price_of(self, model: str) -> float | None:
        """The model's price per image, or None when the model is unknown or down."""
        if model in self.config.down:
            return None
        return self.config.prices.get(model)

    # --- tasks -----------------------------------------------------------------------

    def submit(
        self,
        account: Account,
        *,
        model: str,
        prompt: str,
        aspect: str = "auto",
        size: str = "1K",
        images: int = 1,
        pollable: bool = True,
        unified: bool = False,
    ) -> Task:
        """Accept a submission: charge it, draw its id, duration and outcome, store it.

        Raises InsufficientCredits (charging nothing) when the balance cannot pay,
        InsufficientTokenQuota when what is left of the key's ``token_quota`` cannot,
        and KeyError when ``model`` has no price.
        """
        self.settle()  # refunds that are due count towards the balance
        cost = self.config.prices[model] * images
        if account.balance - cost < -1e-9:
            raise InsufficientCredits(account.balance, cost)
        left = self.token_left(account)
        if left is not None and left - cost < -1e-9:
            raise InsufficientTokenQuota(left, cost)
        rng = self.rng
        task_id = f"task_{rng.getrandbits(128):032x}"
        jitter = rng.uniform(0.75, 1.25)
        markers = parse_markers(prompt)
        failure = ""
        if self.roll(self.config.fail_rate):
            failure = "error"
            if self.roll(self.config.moderation_share):
                failure = MODERATION[rng.getrandbits(1)]
        if markers.failure is not None:
            failure = markers.failure
        if markers.latency is not None:
            duration = markers.latency
        else:
            duration = self.config.latency * jitter * _SIZE_FACTOR.get(size, 1.0)
        now = self.clock()
        task = Task(
            id=task_id,
            account=account,
            model=model,
            prompt=prompt,
            aspect=aspect,
            size=size,
            images=images,
            created=now,
            ends=now + duration,
            failure=failure,
            charged=cost,
            pollable=pollable,
            unified=unified,
        )
        account.balance -= cost
        account.spent += cost
        account.charges += 1
        counters = self.counters
        counters.submissions_charged += 1
        counters.charged_total += cost
        counters.tasks_by_status[RUNNING] += 1
        self.tasks[task_id] = task
        heapq.heappush(self._pending, (task.ends, next(self._seq), task))
        return task

    def view(self, task: Task, now: float | None = None) -> TaskView:
        """The task at ``now`` (default: the clock): running with rising progress, or ended.

        Progress is ``floor(100 * elapsed / duration)`` capped at 99 while running, and
        100 once ended, so it never goes down.
        """
        t = self.clock() if now is None else now
        if t < task.ends:
            span = task.ends - task.created
            progress = min(99, math.floor(100 * (t - task.created) / span)) if span > 0 else 99
            return TaskView(RUNNING, max(0, progress), "", "")
        if task.failure:
            return TaskView(FAILED, 100, task.failure, _FAILURE_TEXT[task.failure])
        return TaskView(SUCCEEDED, 100, "", "")

    def lookup(self, account: Account, task_id: str) -> Task | None:
        """The pollable task ``task_id`` of ``account``, or None (unknown, foreign, sync)."""
        task = self.tasks.get(task_id)
        if task is None or not task.pollable or task.account is not account:
            return None
        return task

    def settle(self) -> None:
        """Apply the effects of every task that has ended by now: counters and refunds."""
        pending = self._pending
        if not pending:
            return
        now = self.clock()
        counters = self.counters
        by_status = counters.tasks_by_status
        while pending and pending[0][0] <= now:
            task = heapq.heappop(pending)[2]
            by_status[RUNNING] -= 1
            if task.failure:
                by_status[FAILED] += 1
                task.refunded = task.charged
                task.account.balance += task.charged
                task.account.spent -= task.charged
                counters.refunded_total += task.charged
            else:
                by_status[SUCCEEDED] += 1

    def balance(self, key: str) -> float:
        """The balance of API key ``key`` after every refund that is due."""
        self.settle()
        return self.account_for_key(key).balance

    # --- reports ---------------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        """The ``/_sim/stats`` JSON object, settled to now.

        Counts: ``submissions_charged``, ``submissions_dropped`` (charged, then the
        connection was cut), ``rate_limited`` (every 429 sent), ``busy_injected``,
        ``errors_injected`` (5xx and chat errors), ``polls_hung``, ``tasks``,
        ``downloads`` (complete), ``downloads_truncated``, ``downloads_oversize``,
        ``downloads_expired``, ``downloads_with_credentials``. Money, rounded to 6
        decimals: ``charged_total``, ``refunded_total``. Maps: ``requests_by_route``
        (``"POST /v1/draw/result": n``), ``tasks_by_status`` (running/succeeded/failed),
        ``rate_limited_by_route`` (the 429s among them), ``charges_by_key`` (charges
        per ``key#N`` / ``user:ID``; keys never appear), ``usage_by_key`` (what each
        of them was charged minus what was refunded, rounded to 6 decimals).
        """
        self.settle()
        c = self.counters
        charged = [a for a in self._accounts.values() if a.charges or a.spent]
        charges = {a.label: a.charges for a in charged}
        return {
            "submissions_charged": c.submissions_charged,
            "submissions_dropped": c.submissions_dropped,
            "charged_total": round(c.charged_total, 6),
            "refunded_total": round(c.refunded_total, 6),
            "rate_limited": c.rate_limited,
            "busy_injected": c.busy_injected,
            "errors_injected": c.errors_injected,
            "polls_hung": c.polls_hung,
            "requests_by_route": dict(c.requests_by_route),
            "rate_limited_by_route": dict(c.rate_limited_by_route),
            "tasks_by_status": dict(c.tasks_by_status),
            "tasks": len(self.tasks),
            "downloads": c.downloads,
            "downloads_truncated": c.downloads_truncated,
            "downloads_oversize": c.downloads_oversize,
            "downloads_expired": c.downloads_expired,
            "downloads_with_credentials": c.downloads_with_credentials,
            "chat_answers": c.chat_answers,
            "chat_charged": round(c.chat_charged, 6),
            "charges_by_key": charges,
            "usage_by_key": {a.label: round(a.spent, 6) or 0.0 for a in charged},
        }

    def task_rows(self) -> list[dict[str, object]]:
        """The ``/_sim/tasks`` JSON list: one object per task, in submission order.

        Each has ``id``, ``account`` (label), ``model``, ``prompt``, ``status``
        (canonical: running/succeeded/failed), ``failure_reason``, ``images``,
        ``pollable``, ``charged``, ``refunded``, ``created`` (Unix time) and
        ``served_sha256`` (digests of the images served completely, each once).
        """
        self.settle()
        now = self.clock()
        rows: list[dict[str, object]] = []
        for task in self.tasks.values():
            view = self.view(task, now)
            rows.append(
                {
                    "id": task.id,
                    "account": task.account.label,
                    "model": task.model,
                    "prompt": task.prompt,
                    "status": view.status,
                    "failure_reason": view.failure_reason,
                    "images": task.images,
                    "pollable": task.pollable,
                    "charged": round(task.charged, 6),
                    "refunded": round(task.refunded, 6),
                    "created": round(self.wall(task.created), 3),
                    "served_sha256": list(task.served or ()),
                }
            )
        return rows
