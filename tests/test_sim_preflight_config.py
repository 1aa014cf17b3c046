"""The preflight routes' settings: defaults, validation, USD prices and batchgen sim flags."""

from __future__ import annotations

import argparse

import pytest

from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.sim import SimConfig, gateway_profile
from batchgen.sim.cli import main
from batchgen.sim.config import config_from_args, configure_parser
from batchgen.sim.preflight import MAX_PRICE_FACTOR, price_factor, usd_price


def parse(*argv: str) -> SimConfig:
    """The config ``batchgen sim ARGV`` would serve."""
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_defaults() -> None:
    """A default config displays CNY at 7.3, one group at ratio 1, hides nothing, no limit."""
    c = SimConfig()
    assert (c.display_currency, c.usd_exchange_rate, c.quota_per_unit) == ("CNY", 7.3, 500000)
    assert (c.group_ratios, c.hidden_routes) == ({"default": 1.0}, [])
    assert (c.dashboard_limit, c.billing_error) == (0, False)
    assert SimConfig().group_ratios is not c.group_ratios  # each config has its own dict


def test_every_preflight_option_lands_in_its_field() -> None:
    """The new batchgen sim options map onto their SimConfig fields."""
    c = parse(
        "--display-currency", "USD", "--usd-rate", "6.9", "--quota-per-unit", "1000",
        "--group-ratio", "vip=1.5", "--group-ratio", "svip=0.8", "--group", "vip",
        "--hide", "models", "--hide", "pricing", "--dashboard-limit", "5", "--billing-error",
    )  # fmt: skip
    assert (c.display_currency, c.usd_exchange_rate, c.quota_per_unit) == ("USD", 6.9, 1000)
    assert c.group_ratios == {"default": 1.0, "vip": 1.5, "svip": 0.8}
    assert (c.group, c.hidden_routes) == ("vip", ["models", "pricing"])
    assert (c.dashboard_limit, c.billing_error) == (5, True)
    assert parse() == SimConfig()


def test_group_ratio_can_override_the_default_group() -> None:
    """--group-ratio default=R replaces the default group's ratio; the last one given wins."""
    c = parse("--group-ratio", "default=0.5", "--group-ratio", "vip=2", "--group-ratio", "vip=3")
    assert c.group_ratios == {"default": 0.5, "vip": 3.0}


def test_profile_gateway_limits_preflight_calls_per_ip() -> None:
    """--profile gateway (and gateway_profile()) sets 180 per 180 s; an option overrides it."""
    assert gateway_profile().dashboard_limit == 180
    assert parse("--profile", "gateway").dashboard_limit == 180
    assert parse("--profile", "gateway", "--dashboard-limit", "0").dashboard_limit == 0
    assert SimConfig().dashboard_limit == 0
    assert "dashboard_limit=180" in gateway_profile().summary()


@pytest.mark.parametrize(
    "argv",
    [
        ["--group-ratio", "vip=0"],
        ["--group-ratio", "vip=-1"],
        ["--group-ratio", "vip=x"],
        ["--group-ratio", "vip"],
        ["--group-ratio", "=1"],
        ["--hide", "credits"],
        ["--display-currency", "EUR"],
        ["--usd-rate", "0"],
        ["--dashboard-limit", "-1"],
        ["--quota-per-unit", "1.5"],
    ],
)
def test_bad_preflight_options_are_usage_errors(argv: list[str]) -> None:
    """Values no field could take are refused by the option parser itself."""
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["--quota-per-unit", "0"],
        ["--group-ratio", "vip=20", "--group", "vip"],  # 20 x 7.3 > 100
        ["--group-ratio", "vip=101", "--group", "vip", "--display-currency", "USD"],
    ],
)
def test_options_that_do_not_combine_are_exit_code_2(argv: list[str]) -> None:
    """A zero quota_per_unit, or a price factor past the limit, fails validation: exit 2."""
    assert main(argv) == 2


@pytest.mark.parametrize(
    "change",
    [
        {"display_currency": "EUR"},
        {"usd_exchange_rate": 0},
        {"usd_exchange_rate": float("inf")},
        {"quota_per_unit": 0},
        {"quota_per_unit": 1.5},
        {"group_ratios": {"default": 0}},
        {"group_ratios": {"": 1}},
        {"group_ratios": {"default": "1"}},
        {"group_ratios": {"default": 14}},  # 14 x 7.3 > 100
        {"hidden_routes": ["credits"]},
        {"hidden_routes": "models"},
        {"dashboard_limit": -1},
        {"dashboard_limit": 1.5},
        {"billing_error": 1},
    ],
)
def test_update_refuses_unusable_values(change: dict[str, object]) -> None:
    """Unusable preflight values are refused by update() and leave the config unchanged."""
    config = SimConfig()
    with pytest.raises(ValueError):  # noqa: PT011 - each names its own field
        config.update(change)
    assert config == SimConfig()


def test_update_applies_preflight_values() -> None:
    """Usable values apply at once, as POST /_sim/config does."""
    config = SimConfig()
    config.update(
        {
            "display_currency": "USD",
            "usd_exchange_rate": 7,
            "group_ratios": {"default": 1, "vip": 2},
            "group": "vip",
            "hidden_routes": ["status"],
            "dashboard_limit": 10,
            "billing_error": True,
        }
    )
    assert (config.display_currency, config.usd_exchange_rate) == ("USD", 7.0)
    assert config.group_ratios == {"default": 1.0, "vip": 2.0}
    assert (config.hidden_routes, config.dashboard_limit, config.billing_error) == (
        ["status"], 10, True,
    )  # fmt: skip
    assert config.to_json()["group_ratios"] == {"default": 1.0, "vip": 2.0}


@pytest.mark.parametrize(
    ("currency", "rate", "ratio", "factor"),
    [("CNY", 7.3, 1.0, 7.3), ("USD", 7.3, 1.0, 1.0), ("CNY", 7.0, 0.5, 3.5), ("USD", 9, 2, 2)],
)
def test_price_factor_is_the_charge_formula(
    currency: str, rate: float, ratio: float, factor: float
) -> None:
    """A USD price is multiplied by the group ratio, and by the rate in a CNY display."""
    config = SimConfig(
        display_currency=currency,  # type: ignore[arg-type]
        usd_exchange_rate=rate,
        group_ratios={"default": 1.0, "g": ratio},
        group="g",
    )
    assert price_factor(config) == pytest.approx(factor)


def test_usd_prices_give_back_every_price_at_the_largest_factor() -> None:
    """At the largest factor allowed, the published USD price (12 decimals) charges back
    within 1e-9 of the simulator's price, for a sweep of prices and the published ones."""
    config = SimConfig(group_ratios={"g": MAX_PRICE_FACTOR / 7.3}, group="g")
    config.validate()
    factor = price_factor(config)
    prices = [*DEFAULT_PRICES.values(), 0.0, 0.36, 1.1, 1.98, 1.43]
    prices += [n * 0.000137 for n in range(1, 20000, 7)]
    for price in prices:
        usd = usd_price(price, config)
        assert usd == round(usd, 12)
        assert abs(usd * factor - price) <= 1e-9, price
