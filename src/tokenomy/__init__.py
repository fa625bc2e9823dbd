"""tokenomy: cut the cost of running LLMs.

    >>> import tokenomy
    >>> result = tokenomy.plan("llama-3.1-8b", workload="chat", gpus=["H100-SXM"])
    >>> manifest = tokenomy.compress(None, "w4a16-gptq", "out/gptq")  # embedded SmolLM2
    >>> quality = tokenomy.evaluate("out/gptq")
    >>> best = tokenomy.optimize(schemes=["w8a16", "gguf-q4_k_m"])

Heavy dependencies (torch, transformers, llm-compressor) are imported only by the
functions that need them: `import tokenomy` and `tokenomy plan` never import torch.
"""

from __future__ import annotations

from tokenomy.compress import compress
from tokenomy.errors import TokenomyError
from tokenomy.evaluate import evaluate
from tokenomy.modelspec import ModelSpec
from tokenomy.optimize import optimize
from tokenomy.plan import PlanResult, plan

__all__ = ["ModelSpec", "PlanResult", "TokenomyError", "compress", "evaluate", "optimize",
           "plan"]
__version__ = "0.4.0"
