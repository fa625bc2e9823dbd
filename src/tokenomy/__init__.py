"""tokenomy: cut the cost of running LLMs.

    >>> import tokenomy
    >>> result = tokenomy.plan("llama-3.1-8b", workload="chat", gpus=["H100-SXM"])

Heavy dependencies (torch, transformers) are imported only by the functions that need
them; `import tokenomy` and `tokenomy plan` never import torch.
"""

from __future__ import annotations

from tokenomy.errors import TokenomyError
from tokenomy.modelspec import ModelSpec
from tokenomy.plan import PlanResult, plan

__all__ = ["ModelSpec", "PlanResult", "TokenomyError", "plan"]
__version__ = "0.1.0"
