"""Run an OpenVINO IR (optimum-intel's stateful LLM export, `compress --scheme ov-*`) over
token windows and greedy prompts with OpenVINO's runtime: the same token ids as the other
scorers, the logits the deployed `engine: openvino` computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenomy.capability import usable_cores
from tokenomy.compress.artifact import dir_size
from tokenomy.evaluate.metrics import log_softmax


class OpenVINOScorer:
    engine = "openvino"

    def __init__(self, path: Path):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(path / "openvino_model.xml")
        names = {i.get_any_name() for i in model.inputs}
        missing = {"input_ids", "attention_mask", "position_ids", "beam_idx"} - names
        if missing:
            from tokenomy.errors import InvalidInputError

            raise InvalidInputError(
                f"{path} is not a stateful LLM export (inputs {sorted(names)} lack "
                f"{sorted(missing)}); export it with `tokenomy compress --scheme ov-int8` "
                "or optimum-intel's `--task text-generation-with-past`.")
        self.n_vocab = int(model.outputs[0].get_partial_shape()[-1].get_length())
        compiled = core.compile_model(model, "CPU",
                                      {"INFERENCE_NUM_THREADS": usable_cores()})
        self.request = compiled.create_infer_request()
        self.logits = compiled.output(0)
        self.loaded_bytes = dir_size(path)

    def _forward(self, ids: list[int], start: int) -> np.ndarray:
        """Logits [len(ids), V] for `ids` placed after `start` tokens already in the state."""
        ids_arr = np.asarray([ids], dtype=np.int64)
        out = self.request.infer({
            "input_ids": ids_arr,
            "attention_mask": np.ones((1, start + len(ids)), dtype=np.int64),
            "position_ids": np.arange(start, start + len(ids), dtype=np.int64)[None],
            "beam_idx": np.zeros(1, dtype=np.int32),
        })
        return out[self.logits][0]

    def window_logp(self, ids: np.ndarray) -> np.ndarray:
        # ids: [T] -> log-probs [T-1, V] of positions predicting ids[1:]
        self.request.reset_state()
        return log_softmax(self._forward(ids.tolist(), 0)[:-1].astype(np.float32))

    def greedy_many(self, prompts: list[list[int]], max_new: int, eos: int) -> list[list[int]]:
        return [self.greedy(p, max_new, eos) for p in prompts]

    def greedy(self, prompt: list[int], max_new: int, eos: int) -> list[int]:
        self.request.reset_state()
        logits = self._forward(prompt, 0)[-1]
        out: list[int] = []
        for _ in range(max_new):
            token = int(np.argmax(logits))
            out.append(token)
            if token == eos:
                break
            logits = self._forward([token], len(prompt) + len(out) - 1)[-1]
        return out
