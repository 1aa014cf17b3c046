"""The gateway limiter as pure logic (a fake clock), its config fields, the preset, the ids."""

from __future__ import annotations

import argparse
import re

import pytest

from batchgen.cli import build_parser
from batchgen.sim import SimConfig, gateway_profile
from batchgen.sim.config import config_from_args, configure_parser
from batchgen.sim.gateway import request_id, window_minutes
from batchgen.sim.limits import GatewayLimits, SlidingLog, TotalBucket
from batchgen.sim.state import SimState

GATEWAY_ID = re.compile(r"^(\d{14})(\d{9})([A-Za-z0-9]{16})$")


def parse(*argv: str) -> SimConfig:
    """The config ``batchgen sim ARGV`` describes."""
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return config_from_args(parser.parse_args(list(argv)))


# --- the success limit: a sliding log --------------------------------------------------------


def test_fresh_window_takes_all_at_once_then_waits_for_the_oldest() -> None:
    """A fresh log lets N through at once, then nothing until the oldest is a window old."""
    log = SlidingLog()
    for _ in range(3):
        assert log.allows(3, 60.0, 1000.0)
        log.record(3, 1000.0)
    assert not log.allows(3, 60.0, 1000.0)
    assert not log.allows(3, 60.0, 1059.999)
    assert log.allows(3, 60.0, 1060.0)


def test_each_slot_frees_when_its_entry_is_a_window_old() -> None:
    """Entries recorded at 0, 10 and 20 free one slot at 60, 70 and 80."""
    log = SlidingLog()
    for t in (0.0, 10.0, 20.0):
        log.record(3, t)
    assert not log.allows(3, 60.0, 59.0)
    assert log.allows(3, 60.0, 60.0)
    log.record(3, 60.0)
    assert not log.allows(3, 60.0, 69.5)
    assert log.allows(3, 60.0, 70.0)


def test_refusals_and_failures_are_not_recorded() -> None:
    """A refused request, and an allowed one that is never recorded, leave the log alone."""
    limits = GatewayLimits()
    assert limits.check(2, 60.0, 0, 0.0) is None  # answered >= 400: not recorded
    assert limits.check(2, 60.0, 0, 0.0) is None
    limits.record(2, 0.0)
    assert limits.check(2, 60.0, 0, 1.0) is None
    limits.record(2, 1.0)
    for t in (2.0, 3.0, 4.0):
        assert limits.check(2, 60.0, 0, t) == "success"
    assert limits.log.entries() == [0.0, 1.0]
    assert limits.check(2, 60.0, 0, 60.0) is None


def test_only_the_n_most_recent_are_kept() -> None:
    """Recording past N drops the oldest entries; a larger N later finds free slots."""
    log = SlidingLog()
    for t in range(5):
        log.record(3, float(t))
    assert log.entries() == [2.0, 3.0, 4.0]
    assert len(log) == 3
    assert not log.allows(3, 60.0, 10.0)
    assert log.allows(4, 60.0, 10.0)


def test_limit_zero_is_no_success_limit() -> None:
    """N = 0 allows everything and records nothing."""
    log = SlidingLog()
    for t in range(100):
        assert log.allows(0, 60.0, float(t))
        log.record(0, float(t))
    assert len(log) == 0


# --- the total limit: a token bucket ---------------------------------------------------------


def test_total_bucket_has_burst_n_and_refills_one_per_window_over_n() -> None:
    """Burst 3 at once, then one request back every 60/3 = 20 s, never more than 3."""
    bucket = TotalBucket.full(3, 60.0, 0.0)
    assert [bucket.take(3, 60.0, 0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(3, 60.0, 19.9)
    assert bucket.take(3, 60.0, 20.0)
    assert not bucket.take(3, 60.0, 20.0)
    assert [bucket.take(3, 60.0, 1000.0) for _ in range(4)] == [True, True, True, False]


def test_total_limit_counts_failures_too() -> None:
    """The total limit refuses the N+1st attempt though none was recorded as a success."""
    limits = GatewayLimits()
    assert [limits.check(0, 60.0, 2, 0.0) for _ in range(3)] == [None, None, "total"]
    assert limits.check(0, 60.0, 2, 30.0) is None


def test_refused_by_success_takes_no_total_token() -> None:
    """Requests the success limit refuses leave the total bucket's tokens where they were."""
    limits = GatewayLimits()
    assert limits.check(1, 60.0, 2, 0.0) is None
    limits.record(1, 0.0)
    for _ in range(5):
        assert limits.check(1, 60.0, 2, 0.0) == "success"
    # With the success limit lifted, the one token left is still there, then none.
    assert limits.check(0, 60.0, 2, 0.0) is None
    assert limits.check(0, 60.0, 2, 0.0) == "total"


# --- config, preset, command line ------------------------------------------------------------


def test_defaults_keep_the_bucket_limiter_and_sim_wire() -> None:
    """By default the limiter is the token bucket and the wire is the simulator's own."""
    config = SimConfig()
    assert (config.limiter, config.wire, config.gateway_limit, config.gateway_window) == (
        "bucket", "sim", 60, 60.0,
    )  # fmt: skip
    assert (config.gateway_total, config.gateway_polls, config.token_quota) == (0, False, None)
    assert (config.ip_blocked, config.unpriced, config.group) == ([], [], "default")
    assert config.api_version == "v0.10.4"
    assert "limiter=bucket" in config.summary()


def test_gateway_profile_and_its_overrides() -> None:
    """gateway_profile() is new-api's limiter and wire without Retry-After; overrides win."""
    config = gateway_profile()
    assert (config.limiter, config.gateway_limit, config.gateway_window) == ("gateway", 60, 60.0)
    assert (config.wire, config.retry_after) == ("gateway", False)
    assert "limiter=gateway(60/60s,polls=free)" in config.summary()
    assert "rpm" not in config.summary()
    tuned = gateway_profile(gateway_limit=6, gateway_total=100, gateway_polls=True, latency=0.1)
    assert (tuned.gateway_limit, tuned.gateway_total, tuned.latency) == (6, 100, 0.1)
    assert "limiter=gateway(6/60s,total=100,polls=counted)" in tuned.summary()
    with pytest.raises(ValueError, match="gateway_window"):
        gateway_profile(gateway_window=0.0)


def test_config_validates_the_new_fields() -> None:
    """Unusable gateway values are refused by update() and leave the config unchanged."""
    config = SimConfig()
    for change in (
        {"limiter": "leaky"},
        {"wire": "grpc"},
        {"gateway_limit": -1},
        {"gateway_limit": 1.5},
        {"gateway_total": -2},
        {"gateway_window": 0},
        {"token_quota": -1},
        {"group": ""},
        {"api_version": "v1\r\nX-Evil: 1"},
        {"ip_blocked": "sk-sim"},
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - each names its own field
            config.update(change)
    assert config == SimConfig()
    config.update({"limiter": "gateway", "gateway_window": 3, "token_quota": 1, "unpriced": ["m"]})
    assert (config.gateway_window, config.token_quota, config.unpriced) == (3.0, 1.0, ["m"])


def test_blocked_keys_never_show() -> None:
    """ip_blocked holds keys: the JSON form masks them and the summary only counts them."""
    config = SimConfig(keys=["sk-abcdefghijklmnop"], ip_blocked=["sk-abcdefghijklmnop"])
    assert config.to_json()["ip_blocked"] == ["sk-***mnop"]
    assert "abcdefgh" not in config.summary()
    assert "ip_blocked=1 keys" in config.summary()


def test_every_new_option_lands_in_its_field() -> None:
    """The gateway options of batchgen sim map onto their SimConfig fields."""
    c = parse(
        "--limiter", "gateway", "--gateway-limit", "5", "--gateway-window", "0.5",
        "--gateway-total", "9", "--gateway-polls", "--wire", "gateway",
        "--api-version", "v9.9.9", "--ip-blocked", "sk-a", "--ip-blocked", "sk-b",
        "--group", "vip", "--token-quota", "2.5", "--unpriced", "my-model",
    )  # fmt: skip
    assert (c.limiter, c.gateway_limit, c.gateway_window, c.gateway_total) == (
        "gateway", 5, 0.5, 9,
    )  # fmt: skip
    assert (c.gateway_polls, c.wire, c.api_version, c.group) == (True, "gateway", "v9.9.9", "vip")
    assert (c.ip_blocked, c.token_quota, c.unpriced) == (["sk-a", "sk-b"], 2.5, ["my-model"])
    assert parse() == SimConfig()


def test_profile_gateway_with_explicit_overrides() -> None:
    """--profile gateway sets the preset; options given override it, before or after it."""
    c = parse("--profile", "gateway", "--gateway-limit", "6", "--empty-429")
    assert (c.limiter, c.gateway_limit, c.gateway_window, c.wire) == ("gateway", 6, 60.0, "gateway")
    assert (c.retry_after, c.empty_429) == (False, True)
    assert parse("--gateway-limit", "6", "--profile", "gateway").gateway_limit == 6
    assert parse("--profile", "gateway") == gateway_profile()


def test_profile_loses_to_options_equal_to_the_defaults() -> None:
    """An option given with its default value still beats the preset."""
    c = parse("--profile", "gateway", "--limiter", "bucket", "--retry-after", "--wire", "sim")
    assert (c.limiter, c.retry_after, c.wire) == ("bucket", True, "sim")


def test_profile_through_the_main_cli() -> None:
    """`batchgen sim --profile gateway --gateway-limit 6 --empty-429` parses to that gateway."""
    argv = ["sim", "--profile", "gateway", "--gateway-limit", "6", "--empty-429"]
    c = config_from_args(build_parser().parse_args(argv))
    assert (c.limiter, c.gateway_limit, c.wire, c.retry_after) == ("gateway", 6, "gateway", False)
    assert c.empty_429


@pytest.mark.parametrize("argv", [["--gateway-window", "0"], ["--gateway-limit", "-1"]])
def test_bad_gateway_options_are_usage_errors(argv: list[str]) -> None:
    """A window of 0 or a negative limit is refused by the option parser."""
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(argv)


# --- message parts and request ids -----------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(60.0, "1"), (120.0, "2"), (3.0, "0.05"), (90.0, "1.5"), (0.6, "0.01"), (6.0, "0.1")],
)
def test_window_minutes(seconds: float, text: str) -> None:
    """A window is written in minutes: an integer when whole, else the shortest decimal."""
    assert window_minutes(seconds) == text


def test_gateway_request_id_format() -> None:
    """A gateway request id is UTC yyyyMMddHHmmss, 9 digits of nanoseconds, 16 alphanumerics."""
    rid = request_id(86400.25, bytes(range(16)))
    match = GATEWAY_ID.match(rid)
    assert match is not None
    assert match.group(1) == "19700102000000"
    assert match.group(2) == "250000000"


def test_gateway_request_ids_are_seeded() -> None:
    """With wire=gateway the state's ids keep the format, never repeat, and their random
    part repeats for the same seed."""
    a = SimState(SimConfig(wire="gateway", seed=4))
    b = SimState(SimConfig(wire="gateway", seed=4))
    c = SimState(SimConfig(wire="gateway", seed=5))
    ids = [a.next_request_id() for _ in range(50)]
    tails = [GATEWAY_ID.match(i).group(3) for i in ids]  # type: ignore[union-attr]
    assert tails == [b.next_request_id()[-16:] for _ in range(50)]
    assert tails != [c.next_request_id()[-16:] for _ in range(50)]
    assert len(set(ids)) == 50
