"""`tokenomy.evaluate`: measure what quality a compressed model lost against its base."""

from tokenomy.evaluate.runner import EvalConfig, EvalResult, evaluate

__all__ = ["EvalConfig", "EvalResult", "evaluate"]
