"""OpenVINO IR with NNCF-compressed weights, for `engine: openvino` (`--scheme ov-int8`,
`ov-int4`).

optimum-intel exports the model (a stateful LLM graph: input_ids, attention_mask,
position_ids, beam_idx; the KV cache lives in the graph's state) and calls NNCF's
data-free weight compression. optimum-intel 2.2 pins transformers < 5.6 while
llm-compressor needs 5.17, so it is installed apart (`pip install --target`, by
`make install`) and run in a child process with that directory first on its path; torch,
OpenVINO and the rest come from the project's venv. The export's output goes to a log
file under $TOKENOMY_HOME/logs, named in any error.

OpenVINO GenAI also needs the tokenizer as OpenVINO models (openvino_tokenizer.xml,
openvino_detokenizer.xml); openvino-tokenizers converts it here, in tokenomy's process.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from tokenomy.compress.schemes import CompressScheme, choose_group_size
from tokenomy.errors import InvalidInputError, TokenomyError
from tokenomy.home import home, open_private, private_dir
from tokenomy.modelspec import ModelSpec

PINNED = ("optimum-intel==2.2.0 optimum==2.3.0 transformers==5.5.4 nncf==3.4.0 "
          "tokenizers==0.22.2 ninja==1.13.2 pydot==4.0.1 tabulate==0.10.0")  # = Makefile
EXPORT_TIMEOUT_S = 3600


def export_path() -> Path:
    """Where optimum-intel and its pins live: $TOKENOMY_OPTIMUM_INTEL, or beside the venv."""
    path = Path(os.environ.get("TOKENOMY_OPTIMUM_INTEL") or Path(sys.prefix) / "optimum-intel")
    if not (path / "optimum" / "intel").is_dir():
        raise InvalidInputError(
            f"optimum-intel is not installed at {path}: the ov-* schemes export through it, "
            "kept apart from the project's transformers. Run `make install`, or `pip "
            f"install --no-deps --target {path} {PINNED}`.")
    return path


def group_size(spec: ModelSpec) -> tuple[int, str]:
    """NNCF's int4 group size must divide every compressed MatMul's input width."""
    widths = {"hidden": spec.hidden_size, "ffn": spec.intermediate_size,
              "attention output": spec.attention.num_heads * spec.attention.head_dim}
    return choose_group_size({k: int(v) for k, v in widths.items() if v})


def export(hf_dir: Path, scheme: CompressScheme, spec: ModelSpec, out: Path) -> dict:
    """Export `hf_dir` into `out` (which exists and is empty); returns the manifest fields."""
    args = ["--weight-format", scheme.ov_weight_format]
    group, why = None, "per channel: one scale per output row"
    if scheme.int_bits == 4:
        group, why = group_size(spec)
        args += ["--group-size", str(group)]
    log = private_dir(home() / "logs") / f"compress-openvino-{dt.datetime.now():%Y%m%d-%H%M%S}.log"
    cmd = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino",
           "--model", str(hf_dir), "--task", "text-generation-with-past", *args, str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(export_path()), *filter(None, [os.environ.get("PYTHONPATH")])]),
        HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    with open_private(log, "ab") as f:
        try:
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                  timeout=EXPORT_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as e:
            raise TokenomyError(f"optimum-intel's export ran past {EXPORT_TIMEOUT_S} s; "
                                f"its log: {log}") from e
    if done.returncode != 0 or not (out / "openvino_model.xml").is_file():
        raise TokenomyError(f"optimum-intel could not export {hf_dir.name} as {scheme.name}: "
                            f"{_last_error(log)} (its log: {log}; nothing was written)")
    convert_tokenizer(out)
    return dict(recipe=json.dumps({"optimum-cli export openvino": args,
                                   "task": "text-generation-with-past"}),
                group_size=group, group_size_reason=why,
                notes=[f"optimum-intel's export log: {log}"])


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()
             if line.strip()]
    errors = [line for line in lines if "Error" in line or "error:" in line]
    return (errors or lines or ["no output"])[-1][:300]


def convert_tokenizer(out: Path) -> None:
    """openvino_tokenizer.xml / openvino_detokenizer.xml beside the model, for OpenVINO GenAI.

    A tokenizer that transformers rebuilt from GGUF metadata (the embedded SmolLM2) can
    carry a SentencePiece decoder chain (ByteFallback, Fuse, Replace) in front of its
    byte-level one; transformers ignores the extra steps, openvino-tokenizers cannot
    build them. A byte-level pre-tokenizer decodes with the byte-level decoder alone.
    """
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer as convert
    from transformers import AutoTokenizer

    _byte_level_decoder(out / "tokenizer.json")
    tokenizer = AutoTokenizer.from_pretrained(out)
    try:
        ov_tokenizer, ov_detokenizer = convert(tokenizer, with_detokenizer=True)
    except (RuntimeError, ValueError, TypeError, AttributeError) as e:
        raise TokenomyError(f"openvino-tokenizers could not convert {out.name}'s tokenizer "
                            f"for OpenVINO GenAI: {str(e).strip().splitlines()[0]}") from e
    ov.save_model(ov_tokenizer, out / "openvino_tokenizer.xml")
    ov.save_model(ov_detokenizer, out / "openvino_detokenizer.xml")


def _byte_level_decoder(path: Path) -> None:
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    pre, dec = data.get("pre_tokenizer") or {}, data.get("decoder") or {}
    steps = dec.get("decoders") or []
    byte_level = [d for d in steps if d.get("type") == "ByteLevel"]
    if pre.get("type") == "ByteLevel" and dec.get("type") == "Sequence" and byte_level:
        data["decoder"] = byte_level[0]
        path.write_text(json.dumps(data, ensure_ascii=False))


def verify(out: Path) -> str:
    """Reload the IR with OpenVINO's runtime and run one forward pass."""
    import numpy as np
    from transformers import AutoTokenizer

    from tokenomy.evaluate.ov_scorer import OpenVINOScorer

    ids = AutoTokenizer.from_pretrained(out)("The quick brown fox").input_ids
    logp = OpenVINOScorer(out).window_logp(np.asarray(ids))
    if not np.isfinite(logp).all():
        raise InvalidInputError(f"the exported model {out} produces NaN/inf logits.")
    return (f"OpenVINO runtime load + forward pass over {len(ids)} tokens: finite logits; "
            "tokenizer converted for OpenVINO GenAI")
