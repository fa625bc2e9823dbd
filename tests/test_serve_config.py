"""Gateway configs: the shipped example is valid, and `tokenomy serve` refuses a bad
calibration or an unreachable Redis before it starts any engine."""

from __future__ import annotations

from pathlib import Path


def test_serve_fails_fast_on_a_missing_calibration_or_unreachable_redis(tmp_path):
    from click.testing import CliRunner

    from tokenomy.cli import commands

    for extra, expected in (("router: {calibration: nothere.json}", "tokenomy route calibrate"),
                            ("cache: {redis_url: 'redis://127.0.0.1:1'}", "cannot reach Redis")):
        config = tmp_path / "gateway.yaml"
        config.write_text(f"model_list:\n  - model_name: smollm2\n{extra}\n")
        result = CliRunner().invoke(commands(), ["serve", "--config", str(config)])
        assert result.exit_code == 1 and expected in result.output, result.output


def test_the_example_config_and_its_commented_deployments_are_valid(tmp_path):
    import re

    from tokenomy.serve.config import load_config

    example = Path(__file__).resolve().parents[1] / "examples" / "gateway.yaml"
    config = load_config(example)
    assert [d.id for d in config.model_list] == ["smollm2"] and config.cache.semantic
    head, tail = example.read_text().split("# `model: auto`")
    uncommented = re.sub(r"(?m)^  # (?=- |  )", "  ", head) + "# `model: auto`" + tail
    (tmp_path / "gateway.yaml").write_text(uncommented)
    engines = [d.params.engine for d in load_config(tmp_path / "gateway.yaml").model_list]
    assert engines == ["llamacpp", "llamacpp", "vllm", "openai"]
