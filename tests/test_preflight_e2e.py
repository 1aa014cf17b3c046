"""Knowing before paying, end to end against the simulator over loopback HTTP.

The preflight routes (models for this key, its quota and usage, the site's status and
live prices), ``batchgen check``, the prices a run uses, and a budget the service's
usage counter enforces: these runs check what the simulator really charged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchgen.api.auth import BearerAuth
from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.cli import main
from batchgen.errors import AuthenticationError, PreflightError
from batchgen.preflight.job import check
from batchgen.sim import SimConfig, SimServer
from batchgen.spec.load import load_spec
from tests.conftest import SimFactory
from tests.runner_helpers import (
    RecordingHook,
    run_job,
    sim_config,
    stats,
    subjects_spec,
    threaded_simulator,
    write_spec,
)

pytestmark = pytest.mark.anyio

VIP4K = "nano-banana-pro-4k-vip"
HIDEABLE = ["models", "subscription", "usage", "status", "pricing"]


def vip4k_spec(folder: Path, *, budget: float = 10, prices: str = "") -> Path:
    """The issue's job: 30 images of nano-banana-pro-4k-vip (4K), ``limits.budget``."""
    body = (
        f"name: job\noutput: out\nmodel: {VIP4K}\nimage_size: 4K\n"
        "prompt: 'a product photo of {subject}'\n"
        f"matrix:\n  subject: [{', '.join(f's{i}' for i in range(30))}]\n"
        f"limits:\n  budget: {budget}\n  concurrency: 8\n"
    )
    if prices:
        body += f"prices:\n  {prices}\n"
    return write_spec(folder, body)


def charged(sim: SimServer) -> float:
    """What the simulator charged, net of refunds."""
    s = stats(sim)
    return float(s["charged_total"]) - float(s["refunded_total"])


# --- the budget, held against what the service charges --------------------------------------


async def test_the_budget_holds_against_the_live_price(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """30 images at 1.98 with budget 10: the run prices them live and stops with the
    service's charge at or under 10 (five images), the rest pending."""
    spec = vip4k_spec(tmp_path)
    async with sim_factory(sim_config()) as sim:
        summary = await run_job(spec, sim)
        total = charged(sim)
    assert total <= 10 + 1e-9
    assert summary.counts["done"] == 5
    assert summary.stop_reason == "budget"
    assert summary.spent_measured == pytest.approx(total)


async def test_the_usage_counter_holds_the_budget_when_the_price_is_wrong(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """With the price list hidden and the spec saying 0.44 (the old table's price), the
    service's usage counter shows 1.98 an image: the run still stops at or under 10 and
    says what the service measured."""
    spec = vip4k_spec(tmp_path, prices=f"{VIP4K}: 0.44")
    hook = RecordingHook()
    async with sim_factory(sim_config(hidden_routes=["pricing"])) as sim:
        summary = await run_job(spec, sim, hook=hook)
        total = charged(sim)
    assert total <= 10 + 1e-9
    assert summary.stop_reason == "budget"
    assert summary.spent_measured == pytest.approx(total)
    assert summary.spent_total < total  # the estimate was wrong; the measurement won
    assert any("usage counter says" in text for text in hook.texts("warning"))


async def test_a_spec_price_below_the_live_one_is_warned_and_kept(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A spec's own price is a deliberate override: kept for planning, warned when it is
    below the live price, and the budget still holds against the real charge."""
    spec = vip4k_spec(tmp_path, prices=f"{VIP4K}: 0.44")
    hook = RecordingHook()
    async with sim_factory(sim_config()) as sim:
        await run_job(spec, sim, hook=hook)
        total = charged(sim)
    assert total <= 10 + 1e-9
    assert any("below the service's live price" in text for text in hook.texts("warning"))


async def test_a_low_balance_stops_the_run_before_overdrawing(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A balance below the job's cost makes check exit 1, and a run stops before the
    service would refuse for want of credit: nothing failed, nothing overdrawn."""
    spec = subjects_spec(
        tmp_path, [f"s{i}" for i in range(10)], model="nano-banana-pro", limits="concurrency: 2"
    )
    price = DEFAULT_PRICES["nano-banana-pro"]
    credits = 3.5 * price
    async with sim_factory(sim_config(credits=credits)) as sim:
        report = await check(load_spec(spec), base_url=sim.base_url, auth=BearerAuth("sk-sim"))
        hook = RecordingHook()
        summary = await run_job(spec, sim, hook=hook)
        total = charged(sim)
    assert report.exit_code == 1
    assert any("balance" in p for p in report.problems)
    assert total <= credits + 1e-9
    assert summary.counts["done"] == 3
    assert summary.counts["failed"] == 0
    assert any("balance would not cover" in text for text in hook.texts("warning"))


async def test_the_key_quota_is_a_balance_too(tmp_path: Path, sim_factory: SimFactory) -> None:
    """A key with a quota of its own reports used + left; check reads what is left."""
    spec = subjects_spec(tmp_path, ["cat", "dog"], model="nano-banana-pro")
    async with sim_factory(sim_config(token_quota=5.0)) as sim:
        await run_job(spec, sim)
        report = await check(load_spec(spec), base_url=sim.base_url, auth=BearerAuth("sk-sim"))
    left = 5.0 - 2 * DEFAULT_PRICES["nano-banana-pro"]
    assert report.balance == pytest.approx(left)
    assert report.balance_source == "the key's quota less its usage"


# --- refusals before anything is paid ---------------------------------------------------


async def test_a_model_the_key_cannot_use_is_refused_before_any_submission(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A spec model missing from /v1/models ends the run before the ledger and before
    any submission; check names it and exits 1."""
    spec = write_spec(
        tmp_path,
        """
        name: job
        output: out
        prompt: "a photo of {subject}"
        matrix:
          model: [nano-banana-fast, gpt-image-2]
          subject: [cat, dog]
        """,
    )
    async with sim_factory(sim_config(forbid=["gpt-image-2"])) as sim:
        with pytest.raises(PreflightError) as info:
            await run_job(spec, sim)
        report = await check(load_spec(spec), base_url=sim.base_url, auth=BearerAuth("sk-sim"))
        requests = stats(sim)["requests_by_route"]
    assert "gpt-image-2" in str(info.value)
    assert info.value.exit_code == 1
    assert requests.get("POST /v1/api/generate", 0) == 0
    assert not (tmp_path / "out" / "batchgen.sqlite").exists()
    assert report.exit_code == 1
    assert any("gpt-image-2 is not available" in p for p in report.problems)


async def test_a_refused_key_is_refused_by_the_preflight(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A refused key ends the run before anything is written; check exits 3."""
    spec = subjects_spec(tmp_path, ["cat"])
    wrong = BearerAuth("sk-wrong-0123456789abcdef")
    async with sim_factory(sim_config()) as sim:
        with pytest.raises(AuthenticationError):
            await run_job(spec, sim, auth=wrong)
        report = await check(load_spec(spec), base_url=sim.base_url, auth=wrong)
    assert report.exit_code == 3
    assert report.key == "refused"


# --- what is missing degrades to a warning ----------------------------------------------


async def test_every_preflight_route_hidden_still_runs_with_warnings(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """With every preflight route answering 404 the run still works, on table prices and
    an estimated budget, and says which routes it went without."""
    spec = subjects_spec(tmp_path, ["cat", "dog", "owl"])
    hook = RecordingHook()
    async with sim_factory(sim_config(hidden_routes=HIDEABLE)) as sim:
        summary = await run_job(spec, sim, hook=hook)
    assert summary.counts["done"] == 3
    warnings = " ".join(hook.texts("warning"))
    for route in ("/v1/models", "/api/pricing", "/api/status", "/v1/dashboard/billing/usage"):
        assert route in warnings
    assert "estimate only" in warnings
    assert summary.spent_measured is None


async def test_a_live_price_off_the_table_is_used_and_shown(
    tmp_path: Path, sim_factory: SimFactory
) -> None:
    """A live price twice the table's is what the run plans with (and says so), and
    what check shows beside the table's."""
    live = 2 * DEFAULT_PRICES["nano-banana-fast"]
    prices = {**DEFAULT_PRICES, "nano-banana-fast": live}
    spec = subjects_spec(tmp_path, ["cat", "dog"])
    hook = RecordingHook()
    async with sim_factory(sim_config(prices=prices)) as sim:
        summary = await run_job(spec, sim, hook=hook)
        report = await check(load_spec(spec), base_url=sim.base_url, auth=BearerAuth("sk-sim"))
    assert summary.spent_total == pytest.approx(2 * live)
    assert any("using the live price" in text for text in hook.texts("info"))
    (line,) = report.models
    assert line.price.live == pytest.approx(live)
    assert line.price.table == DEFAULT_PRICES["nano-banana-fast"]
    assert line.price.source == "live"
    assert "x2.00" in report.text()


# --- the command line -----------------------------------------------------------------------


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_check_prints_the_report_and_exits_with_its_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check` prints every model with its live and table price and exits 0 when ready,
    1 when a model is not available, 3 when the key is refused; `--json` is the same."""
    spec = subjects_spec(tmp_path, ["cat", "dog"])
    config = SimConfig(latency=0.05, seed=0, keys=["sk-sim-check-0123456789"])
    with threaded_simulator(config) as sim:
        monkeypatch.setenv("COBABA_API_KEY", "sk-sim-check-0123456789")
        code, out, _ = _cli(["check", "--base-url", sim.base_url, str(spec)], capsys)
        assert code == 0
        assert "nano-banana-fast" in out
        assert "ready: the job can run as planned" in out
        code, out, _ = _cli(["check", "--json", "--base-url", sim.base_url, str(spec)], capsys)
        data: dict[str, Any] = json.loads(out)
        assert code == 0
        assert data["exit_code"] == 0
        assert data["models"][0]["price"]["source"] == "live"
        sim.config.forbid = ["nano-banana-fast"]
        code, out, _ = _cli(["check", "--base-url", sim.base_url, str(spec)], capsys)
        assert code == 1
        assert "not available to this key" in out
        monkeypatch.setenv("COBABA_API_KEY", "sk-refused-0123456789")
        code, out, _ = _cli(["check", "--base-url", sim.base_url, str(spec)], capsys)
        assert code == 3
        assert "0123456789" not in out


def test_check_sim_needs_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check --sim` asks a simulator started for it: no key needed."""
    monkeypatch.delenv("COBABA_API_KEY", raising=False)
    spec = subjects_spec(tmp_path, ["cat"])
    code, out, err = _cli(["check", "--sim", str(spec)], capsys)
    assert code == 0, err
    assert "key accepted" in out


def test_plan_shows_where_each_price_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`plan` names each price's source (the table offline, the service with --live)."""
    monkeypatch.delenv("COBABA_API_KEY", raising=False)
    spec = subjects_spec(tmp_path, ["cat"])
    code, out, _ = _cli(["plan", str(spec)], capsys)
    assert code == 0
    assert "built-in table of 2026-06" in out
    code, out, _ = _cli(["plan", "--live", "--sim", str(spec)], capsys)
    assert code == 0
    assert "the service's live price" in out
    code, out, _ = _cli(["plan", "--json", str(spec)], capsys)
    assert json.loads(out.splitlines()[0])["price_source"] == "table"


def test_run_no_check_skips_the_preflight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --no-check` asks no preflight route at all."""
    spec = subjects_spec(tmp_path, ["cat"])
    config = SimConfig(latency=0.05, seed=0, keys=["sk-sim-nocheck-0123456789"])
    with threaded_simulator(config) as sim:
        monkeypatch.setenv("COBABA_API_KEY", "sk-sim-nocheck-0123456789")
        code, _, err = _cli(
            ["run", "--quiet", "--no-check", "--base-url", sim.base_url, str(spec)], capsys
        )
        requests = dict(stats(sim)["requests_by_route"])
    assert code == 0, err
    assert "GET /v1/models" not in requests
    assert "GET /api/pricing" not in requests
