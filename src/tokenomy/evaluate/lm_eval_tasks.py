"""Optional lm-evaluation-harness runs on local task files (its hub datasets are
unreachable offline). Ships one task built from packaged text: `shakespeare_cloze`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tokenomy.errors import InvalidInputError
from tokenomy.evaluate.data import shakespeare_text
from tokenomy.home import cache_dir

TASKS_DIR = Path(__file__).parent / "tasks"
PASSAGE_WORDS = 48


def _cloze_rows(text: str, n: int) -> list[dict]:
    """Passages of PASSAGE_WORDS words; the target is the next word (letters only)."""
    words = re.findall(r"\S+", text)
    rows = []
    for start in range(0, len(words) - PASSAGE_WORDS - 1, PASSAGE_WORDS * 3):
        target = re.sub(r"[^A-Za-z']", "", words[start + PASSAGE_WORDS])
        if len(target) < 3:
            continue
        rows.append({"context": " ".join(words[start:start + PASSAGE_WORDS]), "target": target})
        if len(rows) == n:
            break
    return rows


def prepare_tasks(n: int = 200) -> Path:
    """Write the packaged tasks with their local data into the cache; returns the
    directory to pass to lm-eval as include_path."""
    out = cache_dir("lm_eval_tasks")
    data = out / "shakespeare_cloze.jsonl"
    rows = _cloze_rows(shakespeare_text("hamlet"), n)
    data.write_text("\n".join(json.dumps(r) for r in rows))
    template = (TASKS_DIR / "shakespeare_cloze.yaml").read_text()
    (out / "shakespeare_cloze.yaml").write_text(template.replace("{data_file}", str(data)))
    return out


def check_tasks(tasks: list[str]) -> None:
    """Task names checked before an evaluation starts: the packaged tasks, else (with
    lm-eval installed) the tasks it knows."""
    packaged = {p.stem for p in TASKS_DIR.glob("*.yaml")}
    unknown = [t for t in tasks if t not in packaged]
    if not unknown:
        return
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise InvalidInputError(f"unknown lm-eval task(s) {unknown}: packaged: "
                                f"{', '.join(sorted(packaged))}; others need "
                                "lm-evaluation-harness (pip install 'lm_eval==0.4.13').") from None
    known = set(TaskManager().all_tasks)
    unknown = [t for t in unknown if t not in known]
    if unknown:
        raise InvalidInputError(f"unknown lm-eval task(s) {unknown}: offline, only local "
                                f"tasks work (packaged: {', '.join(sorted(packaged))}).")


def run_lm_eval(model_dir: Path, tasks: list[str], limit: int | None = None,
                include: list[Path] = ()) -> dict:
    """lm-eval's scores of a Hugging Face / compressed-tensors checkpoint, per task."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise InvalidInputError("--lm-eval needs lm-evaluation-harness: pip install "
                                "'lm_eval==0.4.13'.") from e
    if model_dir.suffix == ".gguf" or not (model_dir / "config.json").is_file():
        raise InvalidInputError(
            f"--lm-eval runs transformers checkpoints; {model_dir} is not one (GGUF files "
            "need an lm-eval server backend)."
        )
    manager = TaskManager(include_path=[str(prepare_tasks()), *map(str, include)])
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise InvalidInputError(
            f"unknown lm-eval task(s) {unknown}: offline, only local tasks work (packaged: "
            "shakespeare_cloze; add your own YAML with --lm-eval-include DIR)."
        )
    results = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32",
                              tasks=tasks, task_manager=manager, limit=limit, device="cpu",
                              batch_size=8)
    return {task: {k: v for k, v in scores.items() if isinstance(v, int | float)}
            for task, scores in results["results"].items()}
