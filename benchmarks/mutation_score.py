"""Mutation score of the code that computes money: how many small wrong-number changes
(mutants) to it make at least one test fail.

A self-written runner, not mutmut: mutmut 3 rewrites every function into a trampoline
and runs the whole suite once to map tests to functions, which on this project means the
slow integration tests; this one mutates one site at a time in a copy of the package and
runs only the fast tests that cover each file, stopping at the first failure.

Mutants (Python's ast, one site each): arithmetic operators (+ -, * /, // /, % *, ** *),
augmented assignments, comparisons (< <=, > >=, == !=, is / is not, in / not in) and
numeric constants (n -> n + 1). The real tree is never touched: each mutant is written
into a copy under a temporary directory that comes first on PYTHONPATH.

    .venv/bin/python benchmarks/mutation_score.py              # every file below
    .venv/bin/python benchmarks/mutation_score.py plan/cost.py --list

Prints each surviving mutant (file:line, what changed) and the score per file. Mutants
listed in EQUIVALENT (no input can tell them from the original) are printed with the
reason and not run or counted. Not part of CI: a full run takes about 20 minutes on 2
busy cores.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tokenomy"
# test_plan.py would add ~5 s a mutant on a busy 2-core machine, for few extra kills
# (the CPU roofline's golden test covers plan/cpu.py, none of these files)
PLAN_TESTS = ["tests/test_plan_golden_extra.py", "tests/test_golden_numbers.py",
              "-k", "not cpu_roofline"]
# file (under src/tokenomy) -> the fast tests that cover it
TARGETS = {
    "plan/cost.py": PLAN_TESTS,
    "plan/memory.py": PLAN_TESTS,
    "plan/perf.py": PLAN_TESTS,
    "serve/meter.py": ["tests/test_meter.py"],
    # the gateway's own tests take ~30 s: too slow to run per mutant
    "serve/ledger.py": ["tests/test_meter.py", "tests/test_serve_budgets.py",
                        "-k", "not postgresql"],
}

# Mutants that no input can tell from the original: reported as "equivalent (why)" and
# left out of the score. (file, code, change, why): `code` is the text on the mutated line
# where the mutated expression starts (an operator's left operand), so it names one site.
# Keep this list short: a mutant a test can kill is killed by a test.
EQUIVALENT: list[tuple[str, str, str, str]] = [
    ("plan/cost.py", "b < max_batch", "< -> <=",
     "max_batch joins the set of sizes anyway"),
    ("plan/cost.py", "context=0", "0 -> 1",
     "the prompt-only step has decode_seqs=0: no sequence reads KV or attends to context"),
    ("plan/memory.py", "(width // tp)", "// -> /",
     "equal where tp divides width; where it does not, `or width % tp` decides either way"),
    ("plan/memory.py", "spec.num_layers else 0", "0 -> 1",
     "max(1, k x expert width) == max(0, k x expert width): both are whole numbers >= 1"),
    ("plan/memory.py", "self.kv_room <= 0", "<= -> <",
     "at kv_room == 0 the division gives 0 sequences too"),
    ("plan/perf.py", "context=0", "0 -> 1",
     "a prefill chunk alone has decode_seqs=0: no sequence reads KV or attends to context"),
    ("plan/perf.py", "hw.pp > 1", "> -> >=",
     "at pp == 1 the added term is (pp - 1) x (...) = 0"),
]

ARITHMETIC = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
              ast.FloorDiv: ast.Div, ast.Mod: ast.Mult, ast.Pow: ast.Mult}
COMPARISON = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
              ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
              ast.In: ast.NotIn, ast.NotIn: ast.In}
SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
          ast.Mod: "%", ast.Pow: "**", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
          ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is", ast.IsNot: "is not",
          ast.In: "in", ast.NotIn: "not in"}


@dataclass(frozen=True)
class Mutant:
    file: str
    index: int  # the index-th mutation site of the file, in ast.walk order
    line: int
    col: int  # where the mutated expression starts on its line
    change: str


def _is_number(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, int | float)
            and not isinstance(node.value, bool))


def _sites(tree: ast.AST) -> list[tuple[ast.AST, int | None]]:
    """(node, comparison operand index or None) for every mutable site, in walk order."""
    out: list[tuple[ast.AST, int | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in ARITHMETIC:
            out.append((node, None))
        elif isinstance(node, ast.Compare):
            out += [(node, i) for i, op in enumerate(node.ops) if type(op) in COMPARISON]
        elif _is_number(node):
            out.append((node, None))
    return out


def _mutate(node: ast.AST, operand: int | None) -> str:
    """Change the node in place; return what changed."""
    if isinstance(node, ast.BinOp | ast.AugAssign):
        old = type(node.op)
        node.op = ARITHMETIC[old]()
        return f"{SYMBOL[old]} -> {SYMBOL[type(node.op)]}"
    if isinstance(node, ast.Compare):
        old = type(node.ops[operand])
        node.ops[operand] = COMPARISON[old]()
        return f"{SYMBOL[old]} -> {SYMBOL[type(node.ops[operand])]}"
    old_value = node.value
    node.value = old_value + 1
    return f"{old_value!r} -> {node.value!r}"


def mutants(file: str, source: str) -> list[Mutant]:
    tree = ast.parse(source)
    out = []
    for i, (node, operand) in enumerate(_sites(tree)):
        change = _mutate(copy.deepcopy(node), operand)
        out.append(Mutant(file, i, node.lineno, node.col_offset, change))
    return out


def equivalent(m: Mutant, source: str) -> str | None:
    """Why `m` is listed as equivalent, or None."""
    line = source.splitlines()[m.line - 1]
    for file, code, change, why in EQUIVALENT:
        if file == m.file and change == m.change and _covers(line, code, m.col):
            return why
    return None


def _covers(line: str, code: str, col: int) -> bool:
    """Whether `code` occurs in `line` at a place that spans column `col`."""
    start = line.find(code)
    while start >= 0:
        if start <= col < start + len(code):
            return True
        start = line.find(code, start + 1)
    return False


def mutated_source(m: Mutant, source: str) -> str:
    tree = ast.parse(source)
    node, operand = _sites(tree)[m.index]
    _mutate(node, operand)
    return ast.unparse(tree)


def _preload() -> None:
    """Import the heavy third-party modules once, in the parent: each mutant's tests run in
    a fork of it and import only tokenomy (from the copy) themselves."""
    import importlib

    for name in ("pytest", "numpy", "pydantic", "yaml", "sqlalchemy", "fastapi", "httpx",
                 "openai", "prometheus_client", "rich", "click"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    if any(name == "tokenomy" or name.startswith("tokenomy.") for name in sys.modules):
        raise SystemExit("tokenomy was imported before forking: mutants would not be seen")


def _pytest(tests: list[str], package_root: Path, timeout: float) -> str:
    """'passed', 'failed' or 'timeout': the tests in a fork that imports tokenomy from
    `package_root`."""
    pid = os.fork()
    if pid == 0:  # child
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.chdir(ROOT)
            sys.path.insert(0, str(package_root))
            import pytest

            code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *tests])
        except BaseException:  # anything at all: the mutant broke the run
            code = 3
        os._exit(int(code))
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "passed" if os.waitstatus_to_exitcode(status) == 0 else "failed"
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.02)


def run(files: list[str], timeout_factor: float) -> dict[str, tuple[int, int, list[Mutant]]]:
    scores = {}
    with tempfile.TemporaryDirectory(prefix="tokenomy-mutants-") as tmp:
        copy_root = Path(tmp) / "src"
        shutil.copytree(PACKAGE, copy_root / "tokenomy",
                        ignore=shutil.ignore_patterns("__pycache__"))
        env = {**os.environ, "PYTHONPATH": str(copy_root)}
        where = subprocess.run([sys.executable, "-c", "import tokenomy; print(tokenomy.__file__)"],
                               env=env, capture_output=True, text=True, check=True).stdout
        if not where.startswith(str(copy_root)):
            raise SystemExit(f"the copy is not imported first: tokenomy from {where}")
        os.environ["HF_HUB_OFFLINE"] = "1"
        sys.dont_write_bytecode = True  # a cached .pyc must never stand in for a mutant
        _preload()
        for file in files:
            tests, target = TARGETS[file], copy_root / "tokenomy" / file
            original = target.read_text()
            start = time.monotonic()
            if _pytest(tests, copy_root, timeout=600) != "passed":
                raise SystemExit(f"{file}: its tests fail before any mutation: {tests}")
            limit = max(30.0, timeout_factor * (time.monotonic() - start))
            found = mutants(file, original)  # the copy's: the tree may change meanwhile
            same = {m: why for m in found if (why := equivalent(m, original))}
            for m, why in same.items():
                print(f"  equivalent  {m.file}:{m.line}  {m.change}  ({why})", flush=True)
            found = [m for m in found if m not in same]
            survivors = []
            for n, m in enumerate(found, 1):
                target.write_text(mutated_source(m, original))
                outcome = _pytest(tests, copy_root, timeout=limit)
                target.write_text(original)
                if outcome == "passed":
                    survivors.append(m)
                    print(f"  survived  {m.file}:{m.line}  {m.change}", flush=True)
                if n % 25 == 0:
                    print(f"  {file}: {n}/{len(found)} mutants", flush=True)
            killed = len(found) - len(survivors)
            scores[file] = (killed, len(found), survivors)
            print(f"{file}: {killed}/{len(found)} killed = {killed / len(found):.0%}, "
                  f"{len(same)} equivalent not counted ({time.monotonic() - start:.0f} s)",
                  flush=True)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=list(TARGETS),
                        help=f"under src/tokenomy, of: {', '.join(TARGETS)}")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--timeout-factor", type=float, default=3.0,
                        help="a mutant's tests time out after this x the unmutated run")
    args = parser.parse_args()
    unknown = [f for f in args.files if f not in TARGETS]
    if unknown:
        parser.error(f"unknown file(s) {unknown}; choose from {list(TARGETS)}")
    if args.list:
        for file in args.files:
            source = (PACKAGE / file).read_text()
            for m in mutants(file, source):
                why = equivalent(m, source)
                print(f"{m.file}:{m.line}  {m.change}" + (f"  equivalent ({why})" if why else ""))
        return
    scores = run(args.files, args.timeout_factor)
    print("\nmutation score (killed / mutants):")
    for file, (killed, total, _) in scores.items():
        print(f"  src/tokenomy/{file:<16} {killed:4d} / {total:<4d} {killed / total:6.1%}")


if __name__ == "__main__":
    main()
