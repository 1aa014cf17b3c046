"""The simulator's pure logic: buckets, tasks, billing, refunds, determinism, config."""

from __future__ import annotations

import argparse

import pytest

from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.sim.config import SimConfig, config_from_args, configure_parser
from batchgen.sim.state import InsufficientCredits, SimState, TokenBucket, parse_markers


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def make_state(**changes: object) -> tuple[SimState, FakeClock]:
    config = SimConfig(latency=1.0)
    config.update(changes)
    clock = FakeClock()
    return SimState(config, clock=clock), clock


def test_bucket_starts_full_and_refills_at_rate() -> None:
    """A bucket of capacity 2 at 1 token/s allows 2 at once, then one per second."""
    bucket = TokenBucket(tokens=2.0, updated=0.0)
    assert bucket.take(1.0, 2.0, 0.0) == 0.0
    assert bucket.take(1.0, 2.0, 0.0) == 0.0
    assert bucket.take(1.0, 2.0, 0.0) == pytest.approx(1.0)
    assert bucket.take(1.0, 2.0, 0.5) == pytest.approx(0.5)
    assert bucket.take(1.0, 2.0, 1.0) == 0.0


def test_bucket_never_exceeds_capacity() -> None:
    """Idle time refills a bucket only up to its capacity."""
    bucket = TokenBucket(tokens=0.0, updated=0.0)
    bucket.take(1.0, 3.0, 100.0)
    assert bucket.tokens == pytest.approx(2.0)


def test_submit_bucket_follows_rpm_and_default_burst() -> None:
    """At 60 rpm the default burst is 1: a second submission waits one second."""
    state, clock = make_state(rpm=60)
    account = state.account_for_key("sk-sim")
    assert state.take_submit_token(account) == 0.0
    assert state.take_submit_token(account) == pytest.approx(1.0)
    clock.advance(1.0)
    assert state.take_submit_token(account) == 0.0


def test_rpm_zero_is_unlimited_and_poll_bucket_is_separate() -> None:
    """rpm 0 never limits submissions, and polls have their own bucket."""
    state, _ = make_state(poll_rpm=60)
    account = state.account_for_key("sk-sim")
    assert all(state.take_submit_token(account) == 0.0 for _ in range(100))
    assert state.take_poll_token(account) == 0.0
    assert state.take_poll_token(account) > 0


def test_task_runs_then_succeeds_with_rising_progress() -> None:
    """A task is running with rising progress until its end, then succeeded at 100."""
    state, clock = make_state()
    task = state.submit(state.account_for_key("sk-sim"), model="nano-banana", prompt="cat")
    assert 0.75 <= task.ends - task.created <= 1.25
    seen = []
    while state.view(task).status == "running":
        seen.append(state.view(task).progress)
        clock.advance(0.05)
    assert seen == sorted(seen)
    assert seen[0] == 0
    assert seen[-1] <= 99
    assert state.view(task).status == "succeeded"
    assert state.view(task).progress == 100


def test_image_size_scales_duration() -> None:
    """4K tasks take 1.5x and 2K 1.25x the 1K duration for the same jitter."""
    durations = []
    for size in ("1K", "2K", "4K"):
        state, _ = make_state(seed=7)
        task = state.submit(
            state.account_for_key("sk-sim"), model="nano-banana-pro", prompt="p", size=size
        )
        durations.append(task.ends - task.created)
    assert durations[1] == pytest.approx(durations[0] * 1.25)
    assert durations[2] == pytest.approx(durations[0] * 1.5)


def test_markers_force_failure_and_latency() -> None:
    """Prompt markers force the failure reason and set the exact duration."""
    assert parse_markers("a [sim:fail=input_moderation] b [sim:latency=0.25]").failure == (
        "input_moderation"
    )
    state, clock = make_state()
    task = state.submit(
        state.account_for_key("sk-sim"),
        model="nano-banana",
        prompt="x [sim:fail=output_moderation] [sim:latency=0.25]",
    )
    assert task.ends - task.created == pytest.approx(0.25)
    clock.advance(0.25)
    view = state.view(task)
    assert (view.status, view.failure_reason) == ("failed", "output_moderation")
    assert view.error


def test_charge_at_acceptance_and_lazy_refund_of_failures() -> None:
    """A failed task is charged at once and refunded only when it has ended."""
    state, clock = make_state()
    account = state.account_for_key("sk-sim")
    price = DEFAULT_PRICES["nano-banana-pro"]
    state.submit(account, model="nano-banana-pro", prompt="[sim:fail=error] [sim:latency=1]")
    state.submit(account, model="nano-banana-pro", prompt="ok [sim:latency=1]")
    stats = state.stats()
    assert stats["charged_total"] == pytest.approx(2 * price)
    assert stats["refunded_total"] == 0
    assert stats["tasks_by_status"] == {"running": 2, "succeeded": 0, "failed": 0}
    clock.advance(1.0)
    stats = state.stats()
    assert stats["refunded_total"] == pytest.approx(price)
    assert stats["tasks_by_status"] == {"running": 0, "succeeded": 1, "failed": 1}
    assert state.balance("sk-sim") == pytest.approx(5000 - price)


def test_insufficient_credits_charges_nothing() -> None:
    """A submission the balance cannot pay raises and leaves balance and counters alone."""
    price = DEFAULT_PRICES["nano-banana"]
    state, _ = make_state(credits=1.5 * price)  # one image, not two
    account = state.account_for_key("sk-sim")
    state.submit(account, model="nano-banana", prompt="a")
    with pytest.raises(InsufficientCredits):
        state.submit(account, model="nano-banana", prompt="b")
    assert state.stats()["submissions_charged"] == 1
    assert account.balance == pytest.approx(0.5 * price)


def test_fail_rate_and_moderation_share() -> None:
    """fail_rate 1 fails every task; moderation_share 1 makes every failure moderation."""
    state, _clock = make_state(fail_rate=1.0, moderation_share=1.0, latency=0.0)
    account = state.account_for_key("sk-sim")
    tasks = [state.submit(account, model="nano-banana", prompt=str(i)) for i in range(40)]
    reasons = {state.view(t).failure_reason for t in tasks}
    assert reasons == {"output_moderation", "input_moderation"}


def test_same_seed_same_ids_and_durations() -> None:
    """Two states with the same seed give the same ids and durations for the same calls."""
    runs = []
    for _ in range(2):
        state, _ = make_state(seed=42, fail_rate=0.5)
        account = state.account_for_key("sk-sim")
        tasks = [state.submit(account, model="nano-banana", prompt="p") for _ in range(5)]
        runs.append([(t.id, t.ends - t.created, t.failure) for t in tasks])
    assert runs[0] == runs[1]
    other, _ = make_state(seed=43)
    assert (
        other.submit(other.account_for_key("sk-sim"), model="nano-banana", prompt="p").id
        != (runs[0][0][0])
    )


def test_rolls_draw_only_for_real_probabilities() -> None:
    """roll(0) and roll(1) never consume randomness, so polls cannot shift task ids."""
    a, _ = make_state(seed=1)
    b, _ = make_state(seed=1)
    for _ in range(10):
        assert a.roll(0.0) is False
        assert a.roll(1.0) is True
    ids = [
        s.submit(s.account_for_key("sk-sim"), model="nano-banana", prompt="p").id for s in (a, b)
    ]
    assert ids[0] == ids[1]


def test_lookup_respects_owner_and_pollability() -> None:
    """Only the submitting account can find a task, and sync tasks are never found."""
    state, _ = make_state(keys=["sk-a-000000000", "sk-b-000000000"])
    a = state.account_for_key("sk-a-000000000")
    b = state.account_for_key("sk-b-000000000")
    task = state.submit(a, model="nano-banana", prompt="p")
    sync = state.submit(a, model="nano-banana", prompt="p", pollable=False)
    assert state.lookup(a, task.id) is task
    assert state.lookup(b, task.id) is None
    assert state.lookup(a, sync.id) is None
    assert state.lookup(a, "task_nope") is None


def test_account_labels_hide_keys() -> None:
    """Accounts are labelled by their key's position, never by the key."""
    state, _ = make_state(keys=["sk-first-0000000", "sk-second-000000"])
    state.submit(state.account_for_key("sk-second-000000"), model="nano-banana", prompt="p")
    state.submit(state.account_for_user("7"), model="nano-banana", prompt="p")
    charges = state.stats()["charges_by_key"]
    assert charges == {"key#2": 1, "user:7": 1}
    assert "sk-" not in repr(state.stats())


def test_request_ids_are_seeded_and_unique() -> None:
    """Request ids repeat for the same seed and never within one run."""
    a, _ = make_state(seed=3)
    b, _ = make_state(seed=3)
    ids = [a.next_request_id() for _ in range(50)]
    assert ids == [b.next_request_id() for _ in range(50)]
    assert len(set(ids)) == 50


def test_hundred_thousand_tasks_are_cheap() -> None:
    """100,000 tasks submit and settle quickly (no per-task timers, slotted records)."""
    state, clock = make_state(latency=1.0)
    account = state.account_for_key("sk-sim")
    for i in range(100_000):
        state.submit(account, model="nano-banana-fast", prompt=f"p{i}")
    clock.advance(2.0)
    stats = state.stats()
    assert stats["tasks_by_status"] == {"running": 0, "succeeded": 100_000, "failed": 0}
    assert stats["charged_total"] == pytest.approx(100_000 * DEFAULT_PRICES["nano-banana-fast"])


def test_config_update_is_atomic_and_typed() -> None:
    """update() rejects unknown fields and bad values without changing anything."""
    config = SimConfig()
    with pytest.raises(ValueError, match="unknown"):
        config.update({"latency": 1.0, "nope": 1})
    with pytest.raises(ValueError, match="between 0 and 1"):
        config.update({"latency": 1.0, "error_rate": 2})
    with pytest.raises(ValueError, match="number"):
        config.update({"latency": "fast"})
    assert config.latency == 2.0
    config.update({"latency": 1, "keys": ["sk-x"], "burst": None, "status_style": "upper"})
    assert (config.latency, config.keys, config.status_style) == (1.0, ["sk-x"], "upper")


def test_config_json_masks_keys() -> None:
    """The config's JSON form never shows a whole key."""
    config = SimConfig(keys=["sk-abcdefghijklmnop", "sk-sim"])
    assert config.to_json()["keys"] == ["sk-***mnop", "sk-***"]


def test_cli_options_map_to_fields() -> None:
    """Every batchgen sim option lands in its SimConfig field."""
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    ns = parser.parse_args(
        [
            "--port", "0", "--key", "sk-a", "--key", "sk-b", "--forbid", "gpt-image-2",
            "--down", "nano-banana", "--latency", "0.5", "--fail-rate", "0.1",
            "--moderation-share", "0.5", "--rpm", "120", "--burst", "3", "--poll-rpm", "600",
            "--no-retry-after", "--retry-after-format", "date", "--retry-after-value", "86400",
            "--empty-429", "--busy-rate", "0.2", "--error-rate", "0.3", "--drop-rate", "0.4",
            "--poll-hang-rate", "0.05", "--truncate-rate", "0.06", "--oversize-rate", "0.07",
            "--url-ttl", "10", "--image-scale", "0.25", "--seed", "9",
            "--price", "my-model=1.5", "--price", "nano-banana=0.05", "--credits", "10",
            "--wrap-async", "--single-url", "--status-style", "success",
            "--not-found-style", "code-22", "--no-sse-done",
            "--result-url-template", "file:///etc/{file}", "--session", "abc=42",
        ]
    )  # fmt: skip
    c = config_from_args(ns)
    assert (c.port, c.keys, c.forbid, c.down) == (
        0,
        ["sk-a", "sk-b"],
        ["gpt-image-2"],
        ["nano-banana"],
    )
    assert (c.latency, c.fail_rate, c.moderation_share) == (0.5, 0.1, 0.5)
    assert (c.rpm, c.burst, c.poll_rpm, c.effective_burst()) == (120, 3, 600, 3)
    assert (c.retry_after, c.retry_after_format, c.retry_after_value, c.empty_429) == (
        False, "date", 86400, True,
    )  # fmt: skip
    assert (c.busy_rate, c.error_rate, c.drop_rate, c.poll_hang_rate) == (0.2, 0.3, 0.4, 0.05)
    assert (c.truncate_rate, c.oversize_rate, c.url_ttl, c.image_scale, c.seed) == (
        0.06, 0.07, 10, 0.25, 9,
    )  # fmt: skip
    assert c.prices["my-model"] == 1.5
    assert c.prices["nano-banana"] == 0.05
    assert c.prices["gpt-image-2"] == DEFAULT_PRICES["gpt-image-2"]
    assert (c.credits, c.wrap_async, c.single_url, c.status_style) == (10, True, True, "success")
    assert (c.not_found_style, c.sse_done, c.result_url_template) == (
        "code-22", False, "file:///etc/{file}",
    )  # fmt: skip
    assert c.sessions == {"abc": "42"}


def test_cli_defaults() -> None:
    """Without options the config is the documented default."""
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    config = config_from_args(parser.parse_args([]))
    assert config == SimConfig()
    assert config.effective_burst() == 1.0


def test_cli_rejects_bad_price() -> None:
    """A malformed --price is a usage error (exit 2)."""
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--price", "nano-banana"])
    assert exc.value.code == 2
