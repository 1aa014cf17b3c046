"""Bad inputs: hostile or broken specs are refused fast; hostile values are made safe."""

from __future__ import annotations

import json
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from batchgen.errors import BatchgenError, SpecError
from batchgen.output.tree import _WINDOWS_RESERVED
from batchgen.runner.startup import new_tasks
from batchgen.spec.load import load_spec
from tests.reliability.harness import (
    CANARY_SCAN,
    Processes,
    charges_by_key,
    figure,
    ledger_rows,
    png_files,
    run_cli,
    start_sim,
)

#: A generous bound on refusing one input in-process (the figure is what matters).
BOUND = 5.0


def _bomb() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


HEAD = 'version: 1\nname: bad\nmodel: nano-banana-fast\naspect_ratio: "1:1"\n'
AXES9 = "".join(f"  v{i}: [{', '.join(f'x{i}{j}' for j in range(10))}]\n" for i in range(9))
PROMPT9 = 'prompt: "' + " ".join(f"{{v{i}}}" for i in range(9)) + '"\n'

REJECTED: dict[str, bytes] = {
    "malformed YAML": (HEAD + "prompt: [unclosed\nmatrix: {a: [1, 2]\n").encode(),
    "tab indentation": (HEAD + "prompt: x\nmatrix:\n\ta: [1]\n").encode(),
    "alias bomb": _bomb().encode(),
    "!!python/object/apply": (
        HEAD + 'prompt: !!python/object/apply:os.system ["touch PWNED"]\n'
    ).encode(),
    "!!python/name": (HEAD + "prompt: x\nparams: {hook: !!python/name:os.system }\n").encode(),
    "10 MB spec": (HEAD + "prompt: x\n# " + "x" * (10 * 1024 * 1024) + "\n").encode(),
    "10^9 combinations": (HEAD + PROMPT9 + "matrix:\n" + AXES9).encode(),
    "repeat 10^9": (HEAD + "prompt: x\nrepeat: 1000000000\n").encode(),
    "nesting 200 deep": (HEAD + "prompt: x\nparams: {a: " + "[" * 200 + "]" * 200 + "}\n").encode(),
    "invalid UTF-8": HEAD.encode() + b"prompt: \xff\xfe\xfa bad bytes\n",
    "binary garbage": bytes(range(256)) * 64,
    "layout ../ escape": (
        HEAD + 'prompt: "{s}"\nlayout: "../../{s}.png"\nmatrix: {s: [a, b]}\n'
    ).encode(),
    "absolute layout": (
        HEAD + 'prompt: "{s}"\nlayout: "/etc/{s}.png"\nmatrix: {s: [a, b]}\n'
    ).encode(),
}
NUL_OUTPUT = (HEAD + 'prompt: x\noutput: "out\\0evil"\n').encode()

#: Values that must be made safe (a real run writes every image inside the output folder).
HOSTILE_VALUES = [
    "../../../../tmp/escape",
    "..\\..\\Windows\\System32\\evil",
    "/etc/passwd",
    "a\0b with a NUL",
    "é" * 150,  # 300 bytes of UTF-8
    "x" * 300,
    "CON",
    "nul.txt",
    "COM1",
    "lpt9.png",
    "aux",
    "Ünïcødé 日本語 עברית हिन्दी Ελληνικά",
    "evil\u202egnp.exe",  # right-to-left override
    "zero\u200bwidth\u200djoin",
    "~",
    ".hidden",
    "...",
    "🐱‍👤 emoji",
    "tab\tnew\nline\rreturn",
]


@dataclass
class Outcome:
    """How one bad input was handled."""

    name: str
    seconds: float
    cli_seconds: float
    message: str


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.reliability
def test_bad_specs_are_refused_fast(tmp_path: Path, procs: Processes) -> None:
    """Each broken or hostile spec is refused in under a second with a located message."""
    outcomes: list[Outcome] = []
    for i, (name, content) in enumerate(REJECTED.items()):
        sandbox = tmp_path / f"case{i}"
        jobs = sandbox / "jobs"
        jobs.mkdir(parents=True)
        spec = jobs / "bad.yaml"
        spec.write_bytes(content)
        before = _tree(sandbox)
        started = time.monotonic()
        with pytest.raises(BatchgenError) as caught:
            load_spec(spec)
        seconds = time.monotonic() - started
        CANARY_SCAN.scan_text(name, f"{caught.value} {caught.value!r}")
        assert isinstance(caught.value, SpecError), f"{name}: {caught.value!r}"
        result = run_cli(
            procs, ["run", str(spec), "--base-url", "http://127.0.0.1:9/v1"], cwd=sandbox,
            logdir=tmp_path / "logs" / str(i), timeout=60,
        )  # fmt: skip
        assert result.rc == 2, f"{name}: exit {result.rc}: {result.stderr[-1500:]}"
        assert "Traceback" not in result.stderr, f"{name}: {result.stderr[-3000:]}"
        first = result.stderr.strip().splitlines()[0]
        assert first.startswith(f"{spec}:"), f"{name}: {first!r}"
        assert _tree(sandbox) == before, f"{name}: wrote {_tree(sandbox) - before}"
        assert not (sandbox / "PWNED").exists()
        assert not (jobs / "PWNED").exists()
        assert seconds < BOUND, f"{name}: {seconds:.2f}s"
        outcomes.append(Outcome(name, seconds, result.elapsed, first.split(": ", 1)[-1]))
    for o in outcomes:
        figure(
            f"bad-input {o.name}",
            f"refused in {o.seconds * 1000:.0f} ms (CLI exit 2 in {o.cli_seconds:.2f} s incl."
            f" interpreter start): {o.message[:90]!r}",
        )


@pytest.mark.reliability
def test_hostile_values_are_made_safe(tmp_path: Path, procs: Processes) -> None:
    """Prompts with ../, NUL, 300 bytes, reserved names, mixed scripts: every file stays inside."""
    logs = tmp_path / "logs"
    sim = start_sim(procs, logs, "--latency", "0.1", "--seed", "2", "--image-scale", "0.1")
    sandbox = tmp_path / "sandbox"
    jobs = sandbox / "jobs"
    jobs.mkdir(parents=True)
    spec_path = jobs / "hostile.yaml"
    spec = {
        "version": 1,
        "name": "hostile",
        "output": "out",
        "model": "nano-banana-fast",
        "aspect_ratio": "1:1",
        "prompt": "{s}",
        "layout": "{s}/{prompt}/{s}-{key8}.png",
        "matrix": {"s": HOSTILE_VALUES},
        "limits": {"concurrency": 8},
    }
    spec_path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    before = _tree(sandbox)
    started = time.monotonic()
    loaded = load_spec(spec_path)
    paths = [t.layout_path for t in new_tasks(loaded)]
    seconds = time.monotonic() - started
    assert len(paths) == len(HOSTILE_VALUES) == len(set(paths))
    result = run_cli(
        procs, ["run", str(spec_path), "--base-url", sim.base_url, "--quiet"], cwd=sandbox,
        logdir=logs, timeout=120,
    )  # fmt: skip
    assert result.rc == 0, result.output[-3000:]
    out = (jobs / "out").resolve()
    after = _tree(sandbox) - before
    outside = [p for p in after if not (sandbox / p).resolve().is_relative_to(out)]
    assert outside == [], outside
    assert not Path("/tmp/escape").exists()
    images = png_files(out)
    assert len(images) == len(HOSTILE_VALUES)
    for image in images:
        for part in image.relative_to(out).parts:
            assert part.isprintable(), repr(part)
            assert not part.startswith("."), part
            assert part.split(".")[0].lower() not in _WINDOWS_RESERVED, part
            assert len(part.encode()) <= 255, part
            assert not any(unicodedata.category(c) == "Cf" for c in part), repr(part)
    # Every prompt reached the service intact and stays tied to its task and file.
    rows = ledger_rows(out / "batchgen.sqlite")
    assert {r.prompt for r in rows} == set(HOSTILE_VALUES)
    charges = charges_by_key(rows, sim.tasks())
    assert sorted(charges.values()) == [1] * len(HOSTILE_VALUES), charges
    with (out / "metadata.jsonl").open(encoding="utf-8") as fh:
        manifest = [json.loads(line) for line in fh]
    assert {m["prompt"] for m in manifest} == set(HOSTILE_VALUES)
    assert all((out / m["file_name"]).is_file() for m in manifest)
    assert seconds < BOUND
    sample = sorted(str(p.relative_to(out)) for p in images)[:3]
    figure(
        "hostile-values",
        f"{len(HOSTILE_VALUES)} values (../, \\\\, /etc, NUL, 300 B, CON/nul/COM1/lpt9, mixed"
        f" scripts, RTL override, zero-width, emoji, control chars) planned safe in"
        f" {seconds * 1000:.0f} ms; run wrote {len(images)} images, all inside out/, names"
        f" printable/non-reserved/<=255 B, prompts intact in ledger and manifest; e.g."
        f" {sample[0]!r}",
    )


@pytest.mark.reliability
def test_nul_in_output_path_is_a_spec_error(tmp_path: Path, procs: Processes) -> None:
    """An output folder containing NUL is refused at its line by validate and run (exit 2)."""
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    spec = jobs / "bad.yaml"
    spec.write_bytes(NUL_OUTPUT)
    result = run_cli(
        procs, ["run", str(spec), "--base-url", "http://127.0.0.1:9/v1"], cwd=tmp_path,
        logdir=tmp_path / "logs", timeout=60,
    )  # fmt: skip
    figure("bad-input NUL in output path", f"run: exit {result.rc}, {result.stderr.strip()!r}")
    assert result.rc == 2, result.stderr
    with pytest.raises(SpecError):
        load_spec(spec)
