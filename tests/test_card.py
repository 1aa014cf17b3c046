"""The dataset card (export --format hf), and loading an output folder with `datasets`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
import yaml

from batchgen.cli.app import main
from batchgen.output.card import size_category
from tests.runner_helpers import run_job, sim_config, write_spec

HAVE_DATASETS = importlib.util.find_spec("datasets") is not None

JOB = """
    name: cards
    description: Product shots for a catalogue
    output: out
    embed: parameters
    prompt: "a photo of {subject} in {light}"
    matrix:
      model: [nano-banana-fast, gpt-image-2]
      subject: [a teapot, a lamp]
      light: [daylight]
    """


async def made(tmp_path: Path) -> Path:
    """A finished 4-image job with its card; returns the spec."""
    from batchgen.sim import running_simulator

    spec = write_spec(tmp_path, JOB)
    async with running_simulator(sim_config()) as sim:
        summary = await run_job(spec, sim)
    assert summary.counts["done"] == 4
    code = await anyio.to_thread.run_sync(main, ["export", str(spec), "--format", "hf"])
    assert code == 0
    return spec


def header(card: Path) -> dict[str, object]:
    """The YAML front matter of a card."""
    text = card.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return dict(yaml.safe_load(text.split("---\n")[1]))


def test_size_categories() -> None:
    """Counts map to the hub's size categories."""
    assert [size_category(n) for n in (0, 999, 1000, 54_321, 2_000_000)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "10K<n<100K",
        "1M<n<10M",
    ]


@pytest.mark.anyio
async def test_card_describes_the_folder(tmp_path: Path) -> None:
    """The card's header lists features incl. vars, size and task categories and the data
    files; its text names the job, spec digest, models, counts and dates."""
    await made(tmp_path)
    card = tmp_path / "out" / "README.md"
    meta = header(card)
    assert meta["task_categories"] == ["text-to-image"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["license"] == "unknown"
    info = meta["dataset_info"]
    assert isinstance(info, dict)
    features = {f["name"]: f for f in info["features"]}
    assert features["image"]["dtype"] == "image"
    assert sorted(v["name"] for v in features["vars"]["struct"]) == [
        "aspect_ratio",
        "image_size",
        "light",
        "model",
        "subject",
    ]
    assert "served_sha256" in features
    assert info["splits"] == [{"name": "train", "num_examples": 4}]
    configs = meta["configs"]
    assert isinstance(configs, list)
    paths = configs[0]["data_files"][0]["path"]
    assert paths == ["metadata.jsonl", "gpt-image-2/**", "nano-banana-fast/**"]
    text = card.read_text(encoding="utf-8")
    assert "# cards" in text
    assert "Product shots for a catalogue" in text
    assert "| `gpt-image-2` | 2 |" in text
    assert "Tasks of the job: 4 (4 done)." in text
    assert "Generated 20" in text


def test_export_hf_refuses_an_output_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--format hf writes into the output folder: -o is a usage error."""
    spec = write_spec(tmp_path, JOB)
    assert main(["export", str(spec), "--format", "hf", "-o", "x.md"]) == 2
    assert "drop -o" in capsys.readouterr().err


@pytest.mark.anyio
@pytest.mark.skipif(
    not HAVE_DATASETS,
    reason="`datasets` is not installed: pip install -e '.[dataset]' (python3 tasks.py test does)",
)
async def test_datasets_loads_the_output_folder(tmp_path: Path) -> None:
    """datasets' imagefolder loads the folder (data_dir, and as a hub-style folder with its
    card) with every manifest column, vars included."""
    await made(tmp_path)
    out = tmp_path / "out"
    # A gallery thumbnail must not become a row.
    (out / "thumbs").mkdir()
    (out / "thumbs" / "x-256.webp").write_bytes((out / next(iter(_pngs(out)))).read_bytes())

    def load() -> tuple[object, object]:
        import datasets

        datasets.disable_progress_bars()
        by_dir = datasets.load_dataset(
            "imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "c")
        )
        by_card = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "d"))
        return by_dir, by_card

    by_dir, by_card = await anyio.to_thread.run_sync(load)
    for ds in (by_dir, by_card):
        assert len(ds) == 4  # type: ignore[arg-type]
        row = ds[0]  # type: ignore[index]
        assert row["vars"]["subject"] in ("a teapot", "a lamp")
        assert row["prompt"].startswith("a photo of ")
        assert row["image"].size == (row["width"], row["height"])
        assert row["served_sha256"] != row["sha256"]
    keys = [{r["key"] for r in ds} for ds in (by_dir, by_card)]  # type: ignore[attr-defined]
    assert keys[0] == keys[1]
    assert len(keys[0]) == 4


def _pngs(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
