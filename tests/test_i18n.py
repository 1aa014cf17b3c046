"""Messages in Chinese when asked: the locale or --lang, the gettext catalogs, fallbacks."""

from __future__ import annotations

import gettext
import re
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

import pytest

import tasks
from batchgen.cli import main
from batchgen.cli.app import _explain
from batchgen.errors import (
    AccessDeniedError,
    BatchgenError,
    BusinessError,
    ConfigError,
    QuotaExceededError,
)
from batchgen.i18n import LOCALE_DIR, _, current_language, language_from_env, using
from batchgen.sim import SimServer
from tests.runner_helpers import sim_config, subjects_spec, threaded_simulator, write_spec

REPO = Path(__file__).resolve().parents[1]
PO = LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "batchgen.po"
#: A replacement field of str.format: {name}, {name!r}, {count:,} (not {{ or }}).
_FIELD = re.compile(r"(?<!\{)\{([A-Za-z_]\w*)(?:![rsa])?(?::[^{}]*)?\}")


@pytest.fixture
def sim() -> Iterator[SimServer]:
    """A fast simulator in its own thread (key ``sk-sim``)."""
    with threaded_simulator(sim_config()) as server:
        yield server


@pytest.mark.parametrize(
    ("environ", "language"),
    [
        ({}, "en"),
        ({"LANG": "C.UTF-8"}, "en"),
        ({"LANG": "zh_CN.UTF-8"}, "zh"),
        ({"LANG": "zh_TW.UTF-8"}, "zh"),
        ({"LANG": "en_US.UTF-8", "LC_MESSAGES": "zh_CN.UTF-8"}, "zh"),
        ({"LANG": "zh_CN.UTF-8", "LC_ALL": "en_US.UTF-8"}, "en"),
        ({"LANG": "en_US.UTF-8", "LC_ALL": "zh_CN.GB18030"}, "zh"),
        ({"LC_ALL": "", "LANG": "zh"}, "zh"),
    ],
)
def test_the_language_comes_from_the_locale(environ: dict[str, str], language: str) -> None:
    """The first non-empty of LC_ALL, LC_MESSAGES and LANG decides; any zh* is Chinese."""
    assert language_from_env(environ) == language


def test_the_library_speaks_english_until_told() -> None:
    """Outside `using`, messages are the English source; inside, the catalog's Chinese."""
    assert current_language() == "en"
    assert _("batchgen: interrupted") == "batchgen: interrupted"
    with using("zh"):
        assert current_language() == "zh"
        assert _("batchgen: interrupted") == "batchgen: 已中断"
        assert _("a message nobody translated") == "a message nobody translated"
    assert current_language() == "en"
    with pytest.raises(ValueError, match="unknown language"), using("fr"):
        pass


# --- the catalogs --------------------------------------------------------------------------


def _entries() -> dict[tasks.MessageId, list[str]]:
    return tasks.parse_po(PO.read_text(encoding="utf-8"))


def test_the_catalog_holds_exactly_the_marked_messages() -> None:
    """Every message marked in the code is in the .po, and the .po has no stale one
    (`python3 tasks.py catalogs` adds new ones)."""
    marked = set(tasks.extract_messages())
    in_po = {key for key in _entries() if key != ""}
    assert sorted(map(str, marked - in_po)) == []
    assert sorted(map(str, in_po - marked)) == []


def test_translations_keep_every_placeholder() -> None:
    """Each translation has exactly the fields of its source text, so formatting it can
    never raise (a missing or extra {name} would)."""
    for key, strings in _entries().items():
        sources = [key] if isinstance(key, str) else list(key)
        wanted = set(_FIELD.findall(sources[-1]))
        for text in strings:
            if text and key != "":
                assert set(_FIELD.findall(text)) == wanted, (key, text)


def test_the_compiled_catalog_matches_the_po() -> None:
    """The committed .mo holds the .po's translations (run `python3 tasks.py catalogs`)."""
    with (PO.with_suffix(".mo")).open("rb") as fh:
        compiled = gettext.GNUTranslations(fh)
    assert PO.with_suffix(".mo").read_bytes() == tasks.compile_mo(_entries())
    assert compiled.gettext("warning: ") == "警告："
    assert compiled.ngettext("{count} model", "{count} models", 2) == "{count} 个模型"


def test_the_catalogs_are_package_data() -> None:
    """pyproject's package data ships the .po and the .mo (an installed batchgen speaks
    Chinese too)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["batchgen"]
    for path in (PO, PO.with_suffix(".mo")):
        relative = path.relative_to(REPO / "batchgen").as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns), relative


# --- the CLI --------------------------------------------------------------------------------


def test_validate_in_chinese_by_flag_and_by_locale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--lang zh` and a zh locale give validate's summary in Chinese; `--lang en` wins
    over the locale."""
    spec = subjects_spec(tmp_path, ["猫", "狗"])
    assert main(["--lang", "zh", "validate", str(spec)]) == 0
    assert capsys.readouterr().out == f"{spec}：通过，共 2 个任务（2 个subject），预计 0.10 CNY\n"
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    assert main(["validate", str(spec)]) == 0
    assert "：通过，共 2 个任务" in capsys.readouterr().out
    assert main(["--lang", "en", "validate", str(spec)]) == 0
    assert ": ok, 2 tasks (2 subjects)" in capsys.readouterr().out


def test_validate_messages_in_chinese_with_english_fallback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Translated spec messages come in Chinese at their FILE:LINE:COL; an untranslated one
    in English, in the same format."""
    typo = write_spec(tmp_path, 'promt: "a {subject}"\nmodel: nano-banana-fast\n', name="t.yaml")
    assert main(["--lang", "zh", "validate", str(typo)]) == 2
    assert capsys.readouterr().err == f"{typo}:2:1: 未知的键 'promt'；是不是想写 'prompt'？\n"
    spec = write_spec(
        tmp_path,
        """
        prompt: "a {subject}"
        model: nano-banana-fast
        matrix:
          subject: [cat, cat]
        params:
          size: 2
        """,
    )
    assert main(["--lang", "zh", "validate", str(spec)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert f"{spec}:5:18: 重复的值 'cat'（第 5 行第 13 列已经有了）" in lines
    assert any("params may not set 'size'" in line for line in lines)  # not translated yet
    assert all(re.match(r"^.+:\d+:\d+: .+$", line) for line in lines)


def test_errors_that_stop_a_run_in_chinese(
    tmp_path: Path,
    sim: SimServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A missing key and a refused key end `run` with one Chinese line; the service's own
    message stays as it sent it, after ours."""
    spec = subjects_spec(tmp_path, ["cat"])
    monkeypatch.delenv("COBABA_API_KEY", raising=False)
    assert main(["--lang", "zh", "run", str(spec)]) == 3
    assert capsys.readouterr().err.startswith("batchgen: 错误：没有设置 COBABA_API_KEY")
    monkeypatch.setenv("COBABA_API_KEY", "sk-wrong-0123456789abcdef")
    assert main(["--lang", "zh", "run", "--quiet", "--base-url", sim.base_url, str(spec)]) == 3
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("batchgen: 错误：服务拒绝了令牌")
    assert "。服务返回：" in err
    assert "HTTP 401" in err
    assert "invalid api key" in err.lower() or "无效的令牌" in err  # the service's text, as sent
    assert main(["run", "--quiet", "--base-url", sim.base_url, str(spec)]) == 3
    assert capsys.readouterr().err.startswith("batchgen: error: the service refused the key")


def test_the_run_summary_in_chinese(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The final summary of `run` is Chinese under a zh locale."""
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    spec = subjects_spec(tmp_path, ["猫", "狗 [sim:fail=input_moderation]"])
    argv = ["run", "--sim", "--sim-latency", "0.05", "--quiet", str(spec)]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "job：共 2 个任务，完成 1，失败 1；用时" in out
    assert "  输出目录：" in out
    assert "先运行 `batchgen retry SPEC --failed`" in out


@pytest.mark.parametrize(
    ("error", "english", "chinese"),
    [
        (
            AccessDeniedError("您的 IP 不在令牌允许访问的列表中", status=403, route="POST /x"),
            "this key may not be used from this machine's IP address",
            "该令牌不允许从本机的 IP 地址使用",
        ),
        (
            QuotaExceededError("用户额度不足, 剩余额度: ¥0.01", status=403, route="POST /x"),
            "no credit left",
            "额度不足",
        ),
        (
            BusinessError("积分不足", status=200, code="-1", route="POST /x"),
            "the service refused the request (often: no credit left)",
            "服务拒绝了请求",
        ),
    ],
)
def test_the_service_message_stays_as_sent_after_ours(
    error: BatchgenError, english: str, chinese: str
) -> None:
    """A refusal that stops a run is explained in the reader's language, followed by the
    service's own message exactly as it sent it."""
    assert _explain(error).startswith(english)
    assert _explain(error).endswith(f"The service said: {error}")
    with using("zh"):
        assert _explain(error).startswith(chinese)
        assert _explain(error).endswith(f"。服务返回：{error}")
    plain = ConfigError("something else")
    assert _explain(plain) == "something else"
