"""The Chinese README stays in step with the English one, and its commands run as written.

Both READMEs must link each other, name the same commands (with every option, as
``tests/test_cli.py`` checks for the English one) and the same top-level spec keys; the
Chinese annotated example must load and expand to the count it states, and every
command of its console blocks is run the way a reader would type it, in a copy of the
repository's jobs and examples, under a Chinese locale, with the output it shows.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import tasks
from batchgen.cli import main
from batchgen.sim import SimServer
from batchgen.spec.load import load_spec
from batchgen.spec.model import SpecModel
from tests.runner_helpers import SIM_KEY, sim_config, threaded_simulator
from tests.test_cli import COMMANDS, _missing_from_readme, _sections
from tests.test_cli import _restore_logging as _restore_logging  # main() sets up logging

REPO = Path(__file__).resolve().parents[1]
EN = REPO / "README.md"
ZH = REPO / "README.zh-CN.md"


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_each_readme_links_the_other_at_the_top() -> None:
    """README.md links the Chinese README within its first lines, and back."""
    assert "(README.zh-CN.md)" in "\n".join(_text(EN).splitlines()[:4])
    assert "(README.md)" in "\n".join(_text(ZH).splitlines()[:4])


def test_the_chinese_commands_table_names_every_command_and_option() -> None:
    """README.zh-CN.md's 命令 section documents every command and option of the parser."""
    assert _missing_from_readme(ZH, "命令") == []


def _table_commands(path: Path, section: str) -> set[str]:
    rows = _sections(_text(path))[section]
    return set(re.findall(r"^\| `batchgen ([a-z]+)[ `]", rows, flags=re.MULTILINE))


def test_both_readmes_name_the_same_commands() -> None:
    """The two command tables have a row for the same commands: the parser's."""
    assert _table_commands(EN, "commands") == _table_commands(ZH, "命令") == set(COMMANDS)


def _table_keys(path: Path, section: str) -> set[str]:
    rows = _sections(_text(path))[section]
    keys = re.findall(r"^\| `([a-z_.]+)` \|", rows, flags=re.MULTILINE)
    return {key.split(".")[0] for key in keys}


def test_both_readmes_list_the_same_top_level_spec_keys() -> None:
    """The two key tables list the same top-level spec keys: every field of the spec."""
    fields = {field.alias or name for name, field in SpecModel.model_fields.items()}
    assert _table_keys(EN, "keys") == _table_keys(ZH, "顶层的键") == fields


def test_the_chinese_annotated_example_is_valid(tmp_path: Path) -> None:
    """The Chinese annotated example (Chinese variables and values) loads and expands to
    the 14 tasks its text states."""
    text = _text(ZH)
    block = text.split("### 完整的带注释示例", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    spec_path = tmp_path / "example.yaml"
    spec_path.write_text(block, encoding="utf-8")
    spec = load_spec(spec_path)
    assert spec.task_count == 14
    assert "变体 = 14 个任务" in text


# --- the console blocks, run --------------------------------------------------------------------


def console_commands(text: str) -> list[tuple[str, list[str]]]:
    """Every ``$`` line of the console blocks, with the output lines shown under it."""
    found: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            if line.startswith("$ "):
                found.append((line[2:], []))
            elif line.strip() and found:
                found[-1][1].append(line)
    return found


@pytest.fixture
def service() -> Iterator[SimServer]:
    """The "real service" of the Quickstart: a simulator in its own thread."""
    with threaded_simulator(sim_config()) as server:
        yield server


def _workspace(folder: Path) -> Path:
    """A copy of what the README's commands read: jobs/ and examples/, without outputs."""
    ignore = shutil.ignore_patterns("out")
    shutil.copytree(REPO / "jobs", folder / "jobs", ignore=ignore)
    shutil.copytree(REPO / "examples", folder / "examples", ignore=ignore)
    return folder


def _normal(line: str) -> str:
    return " ".join(line.split())


def _run_batchgen(
    command: str, args: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    target = None
    if ">" in args:
        at = args.index(">")
        args, target = args[:at], Path(args[at + 1])
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, f"{command}: exit {code}\n{err}"
    if target is not None:
        target.write_text(out, encoding="utf-8")
    shown = {_normal(line) for line in (out + err).splitlines()}
    for line in expected:
        assert _normal(line) in shown, f"{command}: the README shows {line!r}\n{out}{err}"


def test_the_chinese_readme_commands_run_as_written(
    tmp_path: Path,
    service: SimServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every command of README.zh-CN.md's console blocks works as written, in order, and
    prints the output the README shows under it (the real service is a simulator)."""
    monkeypatch.chdir(_workspace(tmp_path))
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    monkeypatch.setenv("COBABA_BASE_URL", service.base_url)
    monkeypatch.delenv("COBABA_API_KEY", raising=False)
    ran = 0
    for command, expected in console_commands(_text(ZH)):
        for part in " ".join(shlex.split(command, comments=True)).split(" && "):
            words = part.split()
            if words[:2] == ["python3", "tasks.py"]:
                assert words[2] in tasks.TASKS, command  # the demo and the tests themselves
            elif words[:3] == ["python3", "-m", "venv"] or words[0].endswith("/pip"):
                continue  # installing batchgen: tasks.py's own first step, tested by CI
            elif words[0] == "export":
                name, _, value = words[1].partition("=")
                monkeypatch.setenv(name, SIM_KEY if name == "COBABA_API_KEY" else value)
            else:
                while "=" in words[0]:  # NAME=value before a command: that command's
                    name, _, value = words.pop(0).partition("=")
                    monkeypatch.setenv(name, value)
                assert words[0] in ("batchgen", ".venv/bin/batchgen"), command
                args = words[1:]
                if args[:1] == ["sim"]:
                    continue  # a server that runs until Ctrl-C
                if any("127.0.0.1:8787" in arg for arg in args):
                    continue  # needs the `batchgen sim --port 8787` just above
                _run_batchgen(command, args, expected, capsys)
                ran += 1
    assert ran >= 10
    schema = json.loads((tmp_path / "jobs" / "batchgen.schema.json").read_text(encoding="utf-8"))
    assert schema == json.loads(_text(REPO / "jobs" / "batchgen.schema.json"))
    sheet = tmp_path / "examples" / "out" / "宇航猫-sim" / "contact-sheets" / "001-all-tasks.png"
    assert sheet.is_file()
