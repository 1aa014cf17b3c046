"""The dataset card: ``README.md`` in the output folder, in the Hugging Face format.

``batchgen export SPEC --format hf`` writes it beside ``metadata.jsonl``, so the folder
can be pushed to a dataset hub as it is: a YAML header (the ``configs`` that point the
``imagefolder`` loader at the images and the manifest, and not at the gallery's
thumbnails; ``dataset_info`` with a feature per manifest column, ``vars`` as a struct
of every variable; the size and task categories; the licence, unknown unless the user
sets one), then the job, its spec and digest, the models and counts, the generated axes
and the dates the images were made, and how to load it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from batchgen.output.tree import write_atomic

__all__ = ["CARD_NAME", "CardFacts", "card_text", "size_category", "write_card"]

CARD_NAME: Final = "README.md"
_SIZES: Final = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
)


@dataclass(frozen=True, slots=True)
class CardFacts:
    """What the card says about a job's output folder (gathered from its ledger)."""

    name: str
    description: str
    spec_file: str
    spec_digest: str
    images: int
    tasks: int
    counts: Mapping[str, int]
    models: Mapping[str, int]  # images per model
    variables: Sequence[str]  # every key of ``vars``, first seen first
    folders: Sequence[str]  # top-level parts of the images' paths ("" for the root)
    first_made: str = ""  # ISO dates of the first and last image
    last_made: str = ""
    served_sha256: bool = False  # the manifest has that column (embed: parameters)
    embed: str = "none"
    generated: Sequence[Mapping[str, Any]] = field(default_factory=tuple)  # per axis


def size_category(n: int) -> str:
    """The hub's size category for ``n`` examples."""
    for limit, label in _SIZES:
        if n < limit:
            return label
    return "n>10M" if n < 100_000_000 else "n>100M"


def _features(facts: CardFacts) -> list[dict[str, Any]]:
    string = {"dtype": "string"}
    features: list[dict[str, Any]] = [{"name": "image", "dtype": "image"}]
    features += [{"name": n, **string} for n in ("prompt", "model", "aspect_ratio", "image_size")]
    features.append({"name": "vars", "struct": [{"name": v, **string} for v in facts.variables]})
    features += [{"name": "key", **string}, {"name": "sha256", **string}]
    features += [{"name": "width", "dtype": "int64"}, {"name": "height", "dtype": "int64"}]
    if facts.served_sha256:
        features.append({"name": "served_sha256", **string})
    return features


def _header(facts: CardFacts) -> dict[str, Any]:
    paths = ["metadata.jsonl"] + [
        f"{folder}/**" if folder else "*.png" for folder in sorted(facts.folders)
    ]
    return {
        "pretty_name": facts.name,
        # The service's terms apply to generated images; batchgen cannot know more.
        "license": "unknown",
        "task_categories": ["text-to-image"],
        "size_categories": [size_category(facts.images)],
        "tags": ["synthetic", "batchgen"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": paths}]}],
        "dataset_info": {
            "features": _features(facts),
            "splits": [{"name": "train", "num_examples": facts.images}],
        },
    }


def card_text(facts: CardFacts) -> str:
    """The whole card: the YAML header between ``---`` lines, then Markdown."""
    header = yaml.safe_dump(_header(facts), sort_keys=False, allow_unicode=True, width=1000)
    lines = [f"---\n{header}---", "", f"# {facts.name}", ""]
    if facts.description:
        lines += [facts.description, ""]
    lines += [
        f"{facts.images:,} images made by batchgen through the CobabaAi"
        f" API from the job spec `{facts.spec_file}` (digest `{facts.spec_digest[:16]}`).",
        "",
    ]
    if facts.first_made:
        when = (
            facts.first_made
            if facts.first_made == facts.last_made
            else (f"between {facts.first_made} and {facts.last_made}")
        )
        lines += [f"Generated {when}.", ""]
    lines += ["| Model | Images |", "|---|---|"]
    lines += [f"| `{model}` | {count:,} |" for model, count in sorted(facts.models.items())]
    done = ", ".join(f"{n:,} {state}" for state, n in facts.counts.items() if n)
    lines += ["", f"Tasks of the job: {facts.tasks:,} ({done or 'none'}).", ""]
    for axis in facts.generated:
        lines += [
            f"The values of `{axis['name']}` ({axis['count']}) were written by"
            f" `{axis['model']}` ({axis.get('generated_at') or 'date unknown'}), asked:"
            f' "{axis["instruction"]}"; they are kept in the spec\'s lockfile.',
            "",
        ]
    lines += [
        "## Columns",
        "",
        "`metadata.jsonl` has one line per image: `file_name`, the rendered `prompt`, "
        "`model`, `aspect_ratio`, `image_size`, `vars` (every variable of the task's "
        "matrix combination), the task `key`, the file's `sha256`, `width` and `height`"
        + (
            ", and `served_sha256` (the bytes the service served, before the parameters "
            "were written into the file)."
            if facts.served_sha256
            else "."
        ),
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'ds = load_dataset("imagefolder", data_dir="path/to/this/folder")',
        'print(ds["train"][0]["prompt"], ds["train"][0]["vars"])',
        "```",
        "",
        "## License",
        "",
        "Unknown: the images were generated through a commercial API whose terms apply."
        " Set `license:` in the header above before publishing.",
        "",
    ]
    return "\n".join(lines)


def write_card(root: Path, facts: CardFacts) -> Path:
    """Write ``README.md`` into ``root`` atomically; return its path."""
    path = root / CARD_NAME
    write_atomic(path, card_text(facts))
    return path
