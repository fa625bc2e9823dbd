"""Run a model over token windows and greedy prompts: transformers (Hugging Face and
compressed-tensors checkpoints) or llama.cpp (GGUF files), on the same token ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenomy.capability import usable_cores
from tokenomy.evaluate.metrics import log_softmax
from tokenomy.sources import ModelSource, load_transformers, materialize_hf

GREEDY_BATCH = 8


class TransformersScorer:
    engine = "transformers"

    def __init__(self, source: ModelSource):
        import torch

        torch.set_num_threads(usable_cores())
        # compressed checkpoints run in the dtype they were saved in (as an engine would);
        # the dequantized base in fp32
        dtype = "auto" if source.kind == "hf" and source.quantization else "float32"
        self.model, self.tokenizer = load_transformers(materialize_hf(source), dtype=dtype)
        self.loaded_bytes = sum(
            t.numel() * t.element_size()
            for t in list(self.model.parameters()) + list(self.model.buffers())
        )

    def window_logp(self, ids: np.ndarray) -> np.ndarray:
        # ids: [T] -> log-probs [T-1, V] of positions predicting ids[1:]
        import torch

        with torch.no_grad():
            logits = self.model(torch.as_tensor(ids[None, :], dtype=torch.long)).logits[0]
        return log_softmax(logits[:-1].float().numpy())

    def greedy_many(self, prompts: list[list[int]], max_new: int, eos: int) -> list[list[int]]:
        """Greedy answers, GREEDY_BATCH prompts at a time (left-padded)."""
        import torch

        answers = []
        for i in range(0, len(prompts), GREEDY_BATCH):
            chunk = prompts[i:i + GREEDY_BATCH]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), eos, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, prompt in enumerate(chunk):  # ids: [B, S], left-padded
                ids[row, width - len(prompt):] = torch.as_tensor(prompt)
                mask[row, width - len(prompt):] = 1
            with torch.no_grad():
                out = self.model.generate(ids, attention_mask=mask, max_new_tokens=max_new,
                                          do_sample=False, eos_token_id=eos, pad_token_id=eos)
            for row in out[:, width:].tolist():
                answers.append(row[: row.index(eos) + 1] if eos in row else row)
        return answers


class LlamaCppScorer:
    engine = "llama.cpp"

    def __init__(self, path: Path, n_ctx: int):
        from tokenomy.compress.gguf_backend import load_llama

        self.llm = load_llama(path, n_ctx=n_ctx, logits_all=True)
        self.loaded_bytes = int(self.llm.model_size()) if hasattr(self.llm, "model_size") \
            else path.stat().st_size
        self.n_vocab = self.llm.n_vocab()

    def window_logp(self, ids: np.ndarray) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids.tolist())
        logits = np.asarray(self.llm.scores[: len(ids) - 1])
        return log_softmax(logits)

    def greedy_many(self, prompts: list[list[int]], max_new: int, eos: int) -> list[list[int]]:
        return [self.greedy(p, max_new, eos) for p in prompts]

    def greedy(self, prompt: list[int], max_new: int, eos: int) -> list[int]:
        self.llm.reset()
        self.llm.eval(prompt)
        out: list[int] = []
        for _ in range(max_new):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(token)
            if token == eos:
                break
            self.llm.eval([token])
        return out
