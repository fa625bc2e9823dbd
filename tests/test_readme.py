"""The README cannot rot: every command it shows parses against the real CLI, the cheap
ones run, its config examples validate, its Python snippet runs, and every measured
figure in its Benchmarks section names the script that produces it."""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from tiny import make_model_dir, write_tiny_gguf
from tokenomy.cli import commands
from tokenomy.errors import InvalidInputError

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
CLI = commands()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^\s*```{lang}\n(.*?)^\s*```", README, flags=re.S | re.M)


def readme_commands() -> list[list[str]]:
    """Every `.venv/bin/tokenomy ...` line of the bash blocks, comments stripped and
    continuation lines joined."""
    out = []
    for block in blocks("bash"):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.strip()
            if line.startswith(".venv/bin/tokenomy"):
                out.append(shlex.split(line, comments=True)[1:])
    return out


COMMANDS = readme_commands()


def test_the_readme_shows_every_verb():
    shown = {argv[0] for argv in COMMANDS if argv}
    assert len(COMMANDS) >= 25, COMMANDS
    missing = set(CLI.commands) - shown
    assert not missing, f"verbs with no example in the README: {sorted(missing)}"


def _parse(argv: list[str]) -> None:
    """Parse argv as the CLI would, down to the leaf command, without running it: an
    unknown verb or option, a bad value or a missing file raises."""
    ctx = CLI.make_context("tokenomy", list(argv))
    command = CLI
    with warnings.catch_warnings():  # click 8.2 deprecates protected_args, not 9.0 yet
        warnings.simplefilter("ignore", DeprecationWarning)
        args = ctx.protected_args + ctx.args
        while isinstance(command, click.Group):
            name, command, args = command.resolve_command(ctx, args)
            ctx = command.make_context(name, list(args), parent=ctx)
            args = ctx.protected_args + ctx.args


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_every_readme_command_parses(argv, files, monkeypatch):
    monkeypatch.chdir(files)
    _parse(argv)


def test_parsing_catches_a_wrong_option(files, monkeypatch):
    """The check above can fail: a renamed option or verb, or a bad value, is caught."""
    monkeypatch.chdir(files)
    for argv in (["plan", "llama-3.1-8b", "--gpus", "L4"], ["plans", "llama-3.1-8b"],
                 ["bench", "--concurrency", "x"], ["eval", "out/nothing-here"]):
        with pytest.raises((click.UsageError, InvalidInputError)):
            _parse(argv)


# the placeholders the README's commands name, made real in a temporary directory
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    make_model_dir(root / "my-model")
    for d in ("out/gptq", "out/fp8", "out/smol24", "out/smol24-kd"):
        (root / d).mkdir(parents=True)
    for f in ("out/mine/results.json", "out/b1/result.json", "out/b2/result.json",
              "gateway.yaml", "router.json",
              "my-h100-rows.yaml"):  # only their existence is checked by parsing
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("{}")
    write_tiny_gguf(root / "model.Q4_K_M.gguf")
    workload = next(b for b in blocks("yaml") if "workloads:" in b)
    entry = yaml.safe_load("workloads:" + workload.split("workloads:")[1])["workloads"][0]
    (root / "my-traffic.yaml").write_text(
        yaml.safe_dump({k: v for k, v in entry.items() if k not in ("name", "description")}))
    return root


# the README commands that need no model run, engine, network or measured profile: run
# for real, in the README's order, sharing one home (`usage` reads what `keys` wrote)
RUNNABLE = [a for a in COMMANDS if (a[0] in ("plan", "catalog", "keys", "usage")
                                    or a[:2] == ["compress", "--list"])
            and "--profile" not in a]


@pytest.mark.parametrize("argv", RUNNABLE, ids=[" ".join(a)[:60] for a in RUNNABLE])
def test_cheap_readme_commands_run(argv, files, monkeypatch):
    monkeypatch.chdir(files)
    monkeypatch.setenv("TOKENOMY_HOME", str(files / "home"))
    r = CliRunner().invoke(CLI, argv, catch_exceptions=False)
    assert r.exit_code == 0, f"{argv}: {r.output}"
    assert r.output.strip()


def test_the_gateway_config_example_validates():
    from tokenomy.serve.config import GatewayConfig

    block = next(b for b in blocks("yaml") if "model_list:" in b)
    config = GatewayConfig.model_validate(yaml.safe_load(block))
    assert {d.model_name for d in config.model_list} >= {"smollm2", "gpt-4o-mini"}
    assert config.general.require_api_key
    shipped = Path(__file__).resolve().parents[1] / "examples" / "gateway.yaml"
    GatewayConfig.model_validate(yaml.safe_load(shipped.read_text()))


def test_the_catalog_example_loads(tmp_path):
    from tokenomy import plan
    from tokenomy.catalog import Catalog

    block = next(b for b in blocks("yaml") if "workloads:" in b)
    mine = tmp_path / "my.yaml"
    mine.write_text("workloads:" + block.split("workloads:")[1])  # gpus: '...' elided
    catalog = Catalog.load([mine])
    assert catalog.workload("support-bot").tpot_target_ms == 40
    assert plan("llama-3.1-8b", "support-bot", gpus=["L4"], catalog=catalog).rows


def test_the_python_example_runs(capsys):
    (block,) = blocks("python")
    exec(compile(block, "README.md", "exec"), {})  # our own README's snippet
    printed = capsys.readouterr().out
    assert printed.startswith("[") and len(printed) > 40, printed  # the reasons, a list


def test_measured_figures_name_their_benchmark():
    """Each Benchmarks bullet that quotes a figure names its benchmarks/ script, and
    that script exists."""
    section = README.split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    root = Path(__file__).resolve().parents[1]
    for bullet in re.split(r"\n- ", section)[1:]:
        if re.search(r"\d+(\.\d+)?\s*(%|ms|req/s|tok/s)", bullet):
            script = re.search(r"`(benchmarks/\w+\.py)", bullet)
            assert script, f"a measured figure with no benchmark command: {bullet[:80]}"
            assert (root / script.group(1)).is_file(), script.group(1)
