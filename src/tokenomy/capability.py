"""What this machine's CPU can run: its instruction-set flags and usable cores, and, per
CPU engine and kind of checkpoint, the flags that engine needs (data:
``catalog/cpu_kernels.yaml``).

Checked before an engine starts and before a CPU candidate is offered, so a deployment
this CPU cannot run fails in a second with one line (what is missing, what would run
instead) instead of after an engine's start-up and a traceback from its log.

``TOKENOMY_CPU_FLAGS`` (comma-separated /proc/cpuinfo flags) replaces the detected flags:
it lets a test or a user see what an AVX2-only machine would be told.
"""

from __future__ import annotations

import functools
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from tokenomy.errors import CatalogError, TokenomyError

_KERNELS_FILE = Path(__file__).parent / "catalog" / "cpu_kernels.yaml"


class CapabilityError(TokenomyError):
    """This CPU lacks what an engine needs for a checkpoint."""


@dataclass(frozen=True)
class CpuInfo:
    arch: str  # x86_64, aarch64, arm64 ...
    name: str
    flags: frozenset[str]  # empty when the OS does not expose them
    cores: int  # usable by this process (affinity and cgroup quota)
    flags_source: str  # /proc/cpuinfo | TOKENOMY_CPU_FLAGS | unknown


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def usable_core_ids() -> str:
    """The cores this process may run on, as vLLM's VLLM_CPU_OMP_THREADS_BIND wants them
    ('0,1'): binding to 0..n-1 would miss when the affinity is another set of cores."""
    try:
        ids = sorted(os.sched_getaffinity(0))[:usable_cores()]
    except (AttributeError, OSError):
        ids = list(range(usable_cores()))
    return ",".join(map(str, ids))


def _proc_cpuinfo() -> tuple[str, frozenset[str]]:
    name, flags = "", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not name:
                name = value.strip()
            elif key in ("flags", "Features") and not flags:  # x86 | arm
                flags = frozenset(value.split())
            if name and flags:
                break
    except OSError:
        pass
    return name, flags


@functools.cache
def _detected() -> tuple[str, frozenset[str]]:
    return _proc_cpuinfo()


def cpu_info() -> CpuInfo:
    name, flags = _detected()
    source = "/proc/cpuinfo" if flags else "unknown"
    override = os.environ.get("TOKENOMY_CPU_FLAGS")
    if override is not None:
        flags = frozenset(f.strip().lower() for f in override.split(",") if f.strip())
        source = "TOKENOMY_CPU_FLAGS"
    arch = platform.machine().lower().replace("amd64", "x86_64")
    return CpuInfo(arch=arch, name=name or platform.processor() or arch, flags=flags,
                   cores=usable_cores(), flags_source=source)


# -- the engines' needs (catalog/cpu_kernels.yaml) -------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KindNeeds(_Strict):
    kind: str
    requires: dict[str, list[str]] = {}
    unsupported: str | None = None
    warning: str | None = None
    why: str = ""
    instead: str = ""
    source: str


class EngineNeeds(_Strict):
    name: str
    version: str
    requires: dict[str, list[str]] = {}
    why: str = ""
    instead: str = ""
    source: str
    as_of: str
    kinds: list[KindNeeds] = []


@functools.cache
def engine_needs() -> dict[str, EngineNeeds]:
    try:
        data = yaml.safe_load(_KERNELS_FILE.read_text())
        return {e["name"]: EngineNeeds.model_validate(e) for e in data["engines"]}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise CatalogError(f"{_KERNELS_FILE} is unreadable or malformed: {exc}") from None


@dataclass(frozen=True)
class Verdict:
    engine: str
    kind: str
    ok: bool
    missing: tuple[str, ...] = ()
    reason: str = ""  # why it cannot run (empty when ok)
    instead: str = ""
    warning: str = ""
    verified: bool = True  # False: this architecture or its flags are not known here

    def message(self, what: str) -> str:
        if self.ok:
            return self.warning
        return (f"{what}: {self.engine} cannot run a {self.kind} checkpoint on this CPU "
                f"({cpu_info().name}): {self.reason}. Use instead: {self.instead}. "
                "(README: 'CPU features')")


def _flags_needed(requires: dict[str, list[str]], arch: str) -> list[str] | None:
    """Flags needed on `arch`; None when the table does not cover this architecture."""
    if arch in requires:
        return requires[arch] + requires.get("any", [])
    if "any" in requires:
        return requires["any"]
    return None if requires else []


def check(engine: str, kind: str, cpu: CpuInfo | None = None) -> Verdict:
    """Can `engine` serve a checkpoint of `kind` (see `checkpoint_kind`) on this CPU?"""
    cpu = cpu or cpu_info()
    needs = engine_needs().get(engine)
    if needs is None:
        return Verdict(engine, kind, ok=True, verified=False)
    if mixed_parts(kind):
        return _check_mixed(needs, kind, cpu)
    per_kind = next((k for k in needs.kinds if k.kind == kind), None)
    if per_kind is not None and per_kind.unsupported:
        return Verdict(engine, kind, ok=False, reason=per_kind.unsupported,
                       instead=per_kind.instead)
    verified = per_kind is not None or not needs.kinds  # a kind the table does not list
    for requires, why, instead in (
            (needs.requires, needs.why, needs.instead),
            (per_kind.requires if per_kind else {}, per_kind.why if per_kind else "",
             per_kind.instead if per_kind else "")):
        wanted = _flags_needed(requires, cpu.arch)
        if wanted is None or (wanted and not cpu.flags):
            verified = False  # an architecture or a flag list we cannot judge: let it try
            continue
        missing = tuple(f for f in wanted if f not in cpu.flags)
        if missing:
            return Verdict(engine, kind, ok=False, missing=missing,
                           reason=f"it needs {', '.join(missing)} ({why.strip()})",
                           instead=instead)
    return Verdict(engine, kind, ok=True, verified=verified,
                   warning=per_kind.warning if per_kind and per_kind.warning else "")


def _check_mixed(needs: EngineNeeds, kind: str, cpu: CpuInfo) -> Verdict:
    """A checkpoint with several weight formats runs only if every one of them runs: the
    first that does not is the reason; what to do instead is that format's own advice
    when this CPU lacks flags, the table's ``mixed`` row when the engine has no kernel."""
    parts = [check(needs.name, part, cpu) for part in mixed_parts(kind)]
    row = next((k for k in needs.kinds if k.kind == "mixed"), None)
    failed = next((v for v in parts if not v.ok), None)
    if failed is not None:
        instead = failed.instead if failed.missing or row is None else row.instead
        return Verdict(needs.name, kind, ok=False, missing=failed.missing,
                       reason=f"its {failed.kind} modules: {failed.reason}", instead=instead)
    return Verdict(needs.name, kind, ok=True, verified=all(v.verified for v in parts),
                   warning="; ".join(v.warning for v in parts if v.warning))


def require(engine: str, kind: str, what: str) -> Verdict:
    """`check`, raising CapabilityError with one line when the CPU cannot run it."""
    verdict = check(engine, kind)
    if not verdict.ok:
        raise CapabilityError(verdict.message(what))
    return verdict


# -- what kind of checkpoint a directory holds ----------------------------------------
def checkpoint_kind(path: str | Path) -> str:
    """The quantization kind of a checkpoint (dense, wna16-int4, wna16-int8, w8a8-int8,
    fp8, nvfp4, gguf, mixed:... or other), from its config.json's quantization_config
    (compressed-tensors, GPTQ, AWQ) or a .gguf file; dense is bf16/fp16/fp32. A
    compressed-tensors checkpoint whose config groups quantize weights in more than one
    format (auto:llmcompressor's W4A16 + W8A16) is ``mixed:`` and its formats joined by
    '+', 'dense' among them when modules are left unquantized: `check` judges each."""
    path = Path(path).expanduser()
    if path.suffix == ".gguf" or (path.is_dir() and any(path.glob("*.gguf"))):
        return "gguf"
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return "other"
    quant = config.get("quantization_config") or config.get("compression_config")
    if not isinstance(quant, dict):
        return "dense"
    method = str(quant.get("quant_method", "")).lower()
    if method in ("gptq", "awq"):
        return "wna16-int4" if int(quant.get("bits", 4)) == 4 else "wna16-int8"
    if method != "compressed-tensors":
        return "other"
    kinds = {_group_kind(g) for g in (quant.get("config_groups") or {}).values()
             if isinstance(g, dict)}
    if any(not _is_lm_head(str(name)) for name in quant.get("ignore") or []):
        kinds.add("dense")  # modules left 16-bit besides the output head
    quantized = kinds - {"dense"}
    if len(quantized) <= 1:
        return quantized.pop() if quantized else "dense"
    return MIXED + "+".join(sorted(kinds))


MIXED = "mixed:"


def _is_lm_head(name: str) -> bool:
    return name.removeprefix("re:").strip(".*$^").endswith("lm_head")


def mixed_parts(kind: str) -> list[str]:
    """The formats of a ``mixed:`` kind ([] for any other kind)."""
    return kind.removeprefix(MIXED).split("+") if kind.startswith(MIXED) else []


def _group_kind(group: dict) -> str:
    weights, acts = group.get("weights") or {}, group.get("input_activations")
    bits, wtype = weights.get("num_bits"), weights.get("type", "int")
    if not weights:
        return "dense"
    if wtype == "float" and bits == 4:
        return "nvfp4"
    if wtype == "float" and bits == 8:
        return "fp8"
    if wtype == "int" and acts is None:
        return {4: "wna16-int4", 8: "wna16-int8"}.get(bits, "other")
    if wtype == "int" and bits == 8 and isinstance(acts, dict) and acts.get("num_bits") == 8:
        return "w8a8-int8"
    return "other"


def vllm_is_cpu_build(python: str | Path) -> bool:
    """Whether the vLLM installed beside this interpreter is the CPU build (vllm-cpu)."""
    venv = Path(python).parent.parent
    return any(venv.glob("lib/python3*/site-packages/vllm_cpu-*.dist-info"))
