"""Time `tokenomy optimize` on the embedded defaults (the `make demo` settings), twice: a
first run and a re-run that must come from the cache; then render the report in headless
Chromium and save a screenshot beside it.

    python benchmarks/optimize_report.py [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

SCHEMES = ["w8a16", "w4a16", "fp8-dynamic", "nvfp4a16", "gguf-q8_0", "gguf-q6_k", "gguf-q4_k_m"]
GPUS = ["L4", "L40S", "A100-80GB", "H100-SXM"]


def run(out: Path) -> float:
    cmd = [sys.executable, "-m", "tokenomy", "optimize", "--windows", "8", "--prompts", "8",
           "-o", str(out)]
    for s in SCHEMES:
        cmd += ["--scheme", s]
    for g in GPUS:
        cmd += ["--gpu", g]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def screenshot(report: Path) -> Path | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("no Chromium: skipping the screenshot (apt-get install chromium)")
        return None
    shot = report.with_suffix(".png")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", f"--screenshot={shot}",
                    "--window-size=1200,2600", report.resolve().as_uri()],
                   capture_output=True, timeout=120, check=False)
    return shot if shot.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/optimize"))
    args = parser.parse_args()
    first = run(args.out / "first")
    again = run(args.out / "rerun")
    shot = screenshot(args.out / "first" / "report.html")
    print(f"optimize on the embedded defaults ({len(SCHEMES)} schemes, {len(GPUS)} GPU types):"
          f" first run {first:.0f} s, re-run {again:.0f} s (ratio {first / again:.0f}x)")
    if shot:
        print(f"screenshot: {shot}")


if __name__ == "__main__":
    main()
