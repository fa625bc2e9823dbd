"""The Ray executor against a real local Ray instance on 127.0.0.1: same candidates,
same results as the local executor."""

from __future__ import annotations

import pytest

from tiny import make_model_dir, write_jsonl
from tokenomy.evaluate import EvalConfig
from tokenomy.optimize import Settings, optimize
from tokenomy.optimize.executors import LocalExecutor, RayExecutor

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ray_matches_local(tmp_path, monkeypatch):
    model = make_model_dir(tmp_path / "base")
    data = write_jsonl(tmp_path / "data.jsonl", n=80)
    settings = Settings(eval=EvalConfig(dataset=str(data), windows=2, window_tokens=32,
                                        prompts=2, answer_tokens=4, max_new_tokens=8,
                                        max_prompt_tokens=64, topk=16),
                        calibration=str(data), calibration_samples=4, max_seq_length=64)
    runs = {}
    for name, executor in (("local", LocalExecutor()), ("ray", RayExecutor())):
        monkeypatch.setenv("TOKENOMY_HOME", str(tmp_path / f"home-{name}"))  # no shared cache
        seen = []
        runs[name] = optimize(str(model), ["chat"], ["L4"], ["w8a16", "w4a16"],
                              settings=settings, executor=executor,
                              done=lambda r, seen=seen: seen.append(r.cached))
        assert seen == [False, False], f"{name}: expected fresh measurements"
    local, remote = runs["local"], runs["ray"]
    for a, b in zip(local.records, remote.records, strict=True):
        assert a.scheme == b.scheme and b.error is None
        assert b.quality.kld_mean == pytest.approx(a.quality.kld_mean, abs=1e-9)
        assert b.quality.top1_agreement == a.quality.top1_agreement
        assert b.quality.answer_agreement == a.quality.answer_agreement
    assert [s.chosen.scheme for s in local.selections] == \
        [s.chosen.scheme for s in remote.selections]
    assert not ray.is_initialized(), "the executor shuts down the Ray instance it started"
