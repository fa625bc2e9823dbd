"""--scheme auto against every uniform or built-in mixed GGUF scheme of the same file size,
on the embedded SmolLM2-135M-Instruct, measured on the held-out evaluation split.

    python benchmarks/auto_quant.py [--seeds 0,1,2] [--windows 12] [--sweep 2] [--work DIR]
        [--model F16.gguf]
        [--sizes-of gguf-q2_k,gguf-q4_0,gguf-q4_k_m,gguf-q4_1]

Files: llama.cpp's uniform Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, its built-in mixes Q4_K_M,
Q3_K_M, Q3_K_S and Q2_K, its non-linear IQ4_NL and IQ4_XS (the last two and Q3_K_S are not
tokenomy schemes: quantized here by llama.cpp directly), and tokenomy's +imatrix variants
of the block types whose size matches a target. For each target size S (the file size of
a scheme in --sizes-of) auto is allocated at S (the most accurate frontier point not over
S) and written, and every file within +-1% of S is measured: the best of them is the one
to beat. KLD is measured per held-out window on llama.cpp against the base (the embedded
Q4_1 GGUF dequantized, via transformers); 95% bootstrap intervals resample windows
(paired for the reduction). The calibration seed changes the calibration sample (Fisher
and imatrix), never the evaluation windows. The Spearman of predicted vs measured KLD runs
over the auto points and --sweep more frontier points below the smallest target.
Measurements are cached in the work directory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from tokenomy.compress import compress
from tokenomy.compress.auto import SensitivityConfig, sensitivity_table
from tokenomy.compress.auto.allocate import Allocation, choose, fill, frontier
from tokenomy.compress.auto.loop import Meter, eval_config
from tokenomy.compress.auto.writer import other_bytes, write_mixed
from tokenomy.home import cache_dir
from tokenomy.sensitivity.swaps import spearman
from tokenomy.sources import resolve_source

console = Console(width=160)
MODEL: str | None = None  # --model; None: the embedded SmolLM2
UNIFORM = ["gguf-q4_0", "gguf-q4_1", "gguf-q5_0", "gguf-q5_1", "gguf-q8_0",
           "gguf-q4_k_m", "gguf-q3_k_m", "gguf-q2_k",  # the last three: llama.cpp's mixes
           "gguf-q3_k_s", "gguf-iq4_nl", "gguf-iq4_xs"]  # llama.cpp's, not tokenomy schemes
LLAMA_ONLY = {"gguf-q3_k_s": "Q3_K_S", "gguf-iq4_nl": "IQ4_NL", "gguf-iq4_xs": "IQ4_XS"}
IMATRIX = ["gguf-q4_0+imatrix", "gguf-q4_1+imatrix", "gguf-q5_0+imatrix",
           "gguf-q5_1+imatrix", "gguf-q8_0+imatrix"]
RNG = np.random.default_rng(0)


def boot(values: np.ndarray, n: int = 2000) -> tuple[float, float]:
    idx = RNG.integers(0, len(values), size=(n, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def boot_reduction(auto: np.ndarray, best: np.ndarray, n: int = 2000) -> tuple[float, float]:
    idx = RNG.integers(0, len(auto), size=(n, len(auto)))
    red = 1 - auto[idx].mean(axis=1) / best[idx].mean(axis=1)
    return float(np.percentile(red, 2.5)), float(np.percentile(red, 97.5))


def gguf_of(directory: Path) -> Path:
    return next(directory.glob("*.gguf"))


def made(scheme: str, work: Path, config: SensitivityConfig | None) -> Path:
    out = work / scheme.replace("+", "_")
    if not out.exists():
        compress(MODEL, _scheme(scheme), out, sensitivity=config)
    return gguf_of(out)


def _scheme(name: str):
    """A tokenomy scheme, or one of llama.cpp's types tokenomy does not offer, quantized by
    llama.cpp's own API all the same."""
    from tokenomy.compress.schemes import CompressScheme

    if name not in LLAMA_ONLY:
        return name
    return CompressScheme(name=name, backend="gguf", algorithm="llama.cpp",
                          plan_scheme="gguf-q4_k_m", gguf_type=LLAMA_ONLY[name],
                          description=f"llama.cpp {LLAMA_ONLY[name]}")


class Measured:
    """Per-window KLDs of a file, cached on disk by (path, size, mtime, windows)."""

    def __init__(self, meter: Meter, cache: Path):
        self.meter, self.cache = meter, cache
        self.saved = json.loads(cache.read_text()) if cache.is_file() else {}

    def __call__(self, path: Path) -> np.ndarray:
        st = path.stat()
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{self.meter.config.windows}"
        if key not in self.saved:
            self.saved[key] = self.meter.window_klds(path).tolist()
            self.cache.write_text(json.dumps(self.saved))
        klds = np.asarray(self.saved[key])
        console.print(f"  {path.name}: {st.st_size / 1e6:.2f} MB, KLD {klds.mean():.5f}")
        return klds


def packed_from(paths) -> dict:
    """(tensor, type) -> bytes, read back from files tokenomy wrote with the same importance:
    the auto allocations reuse them instead of quantizing again."""
    from gguf import GGUFReader

    from tokenomy.compress.auto.blocks import BLOCK_TYPES

    memo = {}
    for path in paths:
        for t in GGUFReader(str(path)).tensors:
            if t.tensor_type.name in BLOCK_TYPES:
                memo[t.name, t.tensor_type.name] = np.array(t.data)
    return memo


def run_seed(seed: int, args, measure: Measured, uniform_files: dict[str, Path],
             work: Path) -> dict:
    source = resolve_source(MODEL)
    config = SensitivityConfig(seed=seed, windows=args.calib_windows)
    console.print(f"[bold]seed {seed}[/bold]: sensitivity table + imatrix")
    table, importance = sensitivity_table(source, config, lambda m: None)
    front = frontier(table, other_bytes(source.path, {r.name for r in table.rows}))
    seed_dir = work / f"seed{seed}"
    seed_dir.mkdir(exist_ok=True)
    targets = [uniform_files[s].stat().st_size for s in args.sizes_of.split(",")]
    imat_files = {s: made(s, seed_dir, config) for s in IMATRIX
                  if any(_near(made_size(s, uniform_files), t) for t in targets)}
    files = {**uniform_files, **imat_files}
    rows, memo, sweep = [], packed_from(imat_files.values()), []
    for scheme, size in zip(args.sizes_of.split(","), targets, strict=True):
        point = fill(front, choose(front, size_bytes=size), size)
        auto_path = write_point(point, importance, memo, source, seed_dir)
        auto = measure(auto_path)
        sweep.append((point, float(auto.mean())))
        same = {s: measure(p) for s, p in files.items() if _near(p.stat().st_size, size)}
        best = min(same, key=lambda s: same[s].mean())
        rows.append({
            "size_of": scheme, "size_bytes": size, "auto_bytes": auto_path.stat().st_size,
            "auto_within_1pct": _near(auto_path.stat().st_size, size),
            "auto_kld": float(auto.mean()), "auto_ci": boot(auto),
            "auto_predicted": point.kld, "best_same_size": best,
            "best_kld": float(same[best].mean()), "best_ci": boot(same[best]),
            "reduction": float(1 - auto.mean() / same[best].mean()),
            "reduction_ci": boot_reduction(auto, same[best]),
            "measured_same_size": {s: float(k.mean()) for s, k in same.items()},
        })
    low = front.points[0].bytes
    for size in np.linspace(low, min(targets), args.sweep + 2)[:-1]:
        at = choose(front, size_bytes=int(size))
        point = Allocation(front.types_at(at.step), at.bytes, at.kld)
        path = write_point(point, importance, memo, source, seed_dir)
        sweep.append((point, float(measure(path).mean())))
    sweep = sorted({p.bytes: (p, m) for p, m in sweep}.values(), key=lambda pm: pm[0].bytes)
    pred, meas = [p.kld for p, _ in sweep], [m for _, m in sweep]
    return {"seed": seed, "rows": rows, "sweep": {
        "bytes": [p.bytes for p, _ in sweep], "predicted": pred, "measured": meas,
        "spearman": spearman(pred, meas)}}


def _near(a: int, b: int) -> bool:
    return abs(a / b - 1) <= 0.01


def made_size(imatrix_scheme: str, uniform_files: dict[str, Path]) -> int:
    """An +imatrix file has the types, so the size, of its uniform scheme."""
    return uniform_files[imatrix_scheme.split("+")[0]].stat().st_size


def write_point(point: Allocation, importance, memo, source, seed_dir: Path) -> Path:
    target = seed_dir / f"auto-{point.bytes}.gguf"
    if not target.exists():
        write_mixed(source.path, target, point.types, importance, memo=memo)
    return target


def print_tables(results: list[dict], conditions: str) -> None:
    for res in results:
        t = Table(title=f"auto vs the best uniform or built-in scheme of the same size (+-1%), "
                        f"calibration seed {res['seed']}")
        for col in ("size of", "MB", "auto MB (vs)", "auto KLD [95% CI]", "auto predicted",
                    "best same size", "its KLD [95% CI]", "reduction [95% CI]"):
            t.add_column(col)
        for r in res["rows"]:
            t.add_row(r["size_of"], f"{r['size_bytes'] / 1e6:.2f}",
                      f"{r['auto_bytes'] / 1e6:.2f} ({r['auto_bytes'] / r['size_bytes'] - 1:+.1%})",
                      f"{r['auto_kld']:.5f} [{r['auto_ci'][0]:.5f}, {r['auto_ci'][1]:.5f}]",
                      f"{r['auto_predicted']:.5f}", r["best_same_size"],
                      f"{r['best_kld']:.5f} [{r['best_ci'][0]:.5f}, {r['best_ci'][1]:.5f}]",
                      f"{r['reduction']:+.0%} [{r['reduction_ci'][0]:+.0%}, "
                      f"{r['reduction_ci'][1]:+.0%}]")
        console.print(t)
        s = res["sweep"]
        console.print(f"  sweep of {len(s['bytes'])} frontier points "
                      f"({min(s['bytes']) / 1e6:.1f}-{max(s['bytes']) / 1e6:.1f} MB): Spearman "
                      f"predicted vs measured {s['spearman']:.2f}; measured/predicted "
                      + ", ".join(f"{m / p:.2f}" if p > 1e-6 else "- (predicted 0)"
                                  for p, m in zip(s["predicted"], s["measured"], strict=True)))
    console.print(f"conditions: {conditions}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--windows", type=int, default=12, help="held-out windows of 512")
    ap.add_argument("--calib-windows", type=int, default=16, help="calibration windows")
    ap.add_argument("--sizes-of", default="gguf-q2_k,gguf-q4_0,gguf-q4_k_m,gguf-q4_1",
                    help="schemes whose file sizes auto is held to")
    ap.add_argument("--sweep", type=int, default=2,
                    help="extra frontier points below the smallest size, for the Spearman")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--model", default=None,
                    help="a GGUF (e.g. an F16 one) instead of the embedded Q4_1 SmolLM2")
    ap.add_argument("--out", type=Path, default=Path("auto_quant.json"))
    args = ap.parse_args()
    global MODEL
    MODEL = args.model
    work = args.work or cache_dir("bench-auto-quant") / (Path(MODEL).stem if MODEL else "")
    work.mkdir(parents=True, exist_ok=True)
    meter = Meter(resolve_source(MODEL), eval_config("sharegpt", args.windows, 512, 0))
    measure = Measured(meter, work / "measured.json")
    uniform_files = {s: made(s, work, None) for s in UNIFORM}
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        results.append(run_seed(seed, args, measure, uniform_files, work))
        args.out.write_text(json.dumps({"conditions": meter.conditions, "seeds": results},
                                       indent=1))
    print_tables(results, meter.conditions + f"; calibration {args.calib_windows} x 256 "
                 "tokens of ShareGPT's calibration split per seed")


if __name__ == "__main__":
    main()
