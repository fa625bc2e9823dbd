"""The planner's ESTIMATE for each measured run, on the same hardware and workload (the
run's measured mean prompt and answer lengths), so bench can print measured / estimated.

- hardware 'cpu': tokenomy.plan.cpu's llama.cpp roofline over this CPU's measured
  bandwidth and FLOPS; it needs the GGUF being served (the embedded one, --model, or
  --plan-model for a URL).
- a catalog GPU: tokenomy.plan's roofline for --plan-model / --plan-scheme on the
  layout the planner picks, at the run's observed concurrency as the batch.
"""

from __future__ import annotations

from pathlib import Path

from tokenomy.bench.result import BenchConfig, BenchRun, RunEstimate
from tokenomy.errors import TokenomyError


class Estimator:
    def __init__(self, config: BenchConfig, gguf: Path | None, serial: bool,
                 usd_per_hour: float, engine: str = "llama.cpp server"):
        self.config, self.gguf, self.serial = config, gguf, serial
        # the CPU planner's engine: OpenVINO GenAI, else llama.cpp (server or Python)
        self.cpu_engine = "openvino" if engine == "openvino" else "llamacpp"
        self.usd_per_s = usd_per_hour / 3600
        self.note = ""
        self.summary: dict | None = None
        if config.hardware == "cpu" and gguf is None:
            self.note = ("no estimate: the CPU planner needs the served GGUF; pass "
                         "--plan-model PATH.gguf")
        self.available = not self.note
        self.factors = None
        if config.calibration and config.hardware == "cpu":
            from tokenomy.calibrate import load_profile

            self.factors = load_profile(config.calibration).cpu_factors()

    def batch(self, run: BenchRun) -> int:
        if self.serial:
            return 1
        return max(1, round(run.concurrency_observed))

    def for_run(self, run: BenchRun) -> RunEstimate | None:
        if not self.available or run.requests_ok == 0:
            return None
        n_in = run.input_tokens / run.requests_ok
        n_out = run.output_tokens / run.requests_ok
        try:
            if self.config.hardware == "cpu":
                return self._cpu(n_in, n_out, self.batch(run))
            return self._gpu(n_in, n_out, self.batch(run))
        except TokenomyError as e:
            self.available, self.note = False, f"no estimate: {e}"
            return None

    def _cpu(self, n_in: float, n_out: float, batch: int) -> RunEstimate:
        from tokenomy.plan.cpu import estimate

        e = estimate(self.gguf, n_in, n_out, batch=batch, factors=self.factors,
                     engine=self.cpu_engine)
        self.summary = {
            "planner": f"tokenomy.plan.cpu ({e.factors.engine} roofline)", "model": e.model,
            "gguf": str(self.gguf), "weight_bytes": e.weight_bytes,
            "matmul_params": e.matmul_params, "hardware": e.hardware.model_dump(),
            "eff_bandwidth": e.factors.eff_bandwidth, "eff_flops": e.factors.eff_flops,
            "factors": e.factors.model_dump(),
            "serial_engine": self.serial, "prefill_tokens_per_s": e.prefill_tokens_per_s,
            "decode_step_s": e.decode_step_s, "decode_bound": e.decode_bound,
            "rho": e.rho, "method": e.method,
        }
        return self._priced(batch, n_in, n_out, e.output_tokens_per_s, e.requests_per_s,
                            e.machine_s_per_1m_input, e.machine_s_per_1m_output,
                            ttft=(e.request_s - n_out * e.decode_step_s) + e.decode_step_s,
                            tpot=e.decode_step_s)

    def _gpu(self, n_in: float, n_out: float, batch: int) -> RunEstimate:
        from tokenomy.catalog import Workload, default_catalog
        from tokenomy.plan import plan
        from tokenomy.plan.cost import operating_point
        from tokenomy.plan.memory import weight_bytes
        from tokenomy.plan.perf import Hardware
        from tokenomy.plan.workload import resolve_model

        cat = default_catalog()
        model = self.config.plan_model or self.config.model
        wl = Workload(name="bench", description="bench's measured mean lengths",
                      input_tokens=max(1, round(n_in)), output_tokens=max(1, round(n_out)),
                      mode="offline")
        row = plan(model, wl, gpus=[self.config.hardware], schemes=[self.config.plan_scheme],
                   profile=self.config.calibration).rows[0]
        layout = row.serving or row.deployment
        if layout is None:
            raise TokenomyError(f"{model or 'the model'} {self.config.plan_scheme} does not "
                                f"fit {self.config.hardware} by the planner's reckoning")
        spec, scheme = resolve_model(model, cat), cat.scheme(self.config.plan_scheme)
        hw = Hardware(cat.gpu(self.config.hardware), cat.engine(row.engine), layout.tp,
                      layout.pp)
        if row.ranges and self.config.calibration:  # the calibrated factors, as plan used them
            from tokenomy.plan import engine_for, gpu_profile

            hw = Hardware(hw.gpu, engine_for(scheme, hw.gpu, cat, None,
                                              gpu_profile(self.config.calibration)), layout.tp,
                          layout.pp)
        p = operating_point(spec, scheme, weight_bytes(spec, scheme), hw, wl, batch, 16)
        share = p.input_time_share
        self.summary = {
            "planner": "tokenomy.plan (GPU roofline)", "model": spec.name,
            "scheme": scheme.name, "gpu": self.config.hardware, "tp": layout.tp,
            "pp": layout.pp, "engine": hw.engine.name,
        }
        return self._priced(batch, n_in, n_out, p.output_tokens_per_s,
                            p.output_tokens_per_s / wl.output_tokens,
                            share / p.input_tokens_per_s * 1e6,
                            (1 - share) / p.output_tokens_per_s * 1e6,
                            ttft=p.ttft_s, tpot=p.tpot_ms / 1e3)

    def _priced(self, batch, n_in, n_out, out_tps, rps, s_in, s_out, *, ttft, tpot):
        total_tps = out_tps * (n_in + n_out) / n_out
        return RunEstimate(
            batch=batch, input_tokens=n_in, output_tokens=n_out, output_tokens_per_s=out_tps,
            total_tokens_per_s=total_tps, requests_per_s=rps, ttft_s=ttft, tpot_s=tpot,
            machine_s_per_1m_input=s_in, machine_s_per_1m_output=s_out,
            usd_per_1m_input=self.usd_per_s * s_in, usd_per_1m_output=self.usd_per_s * s_out,
            usd_per_1m_tokens=self.usd_per_s / total_tps * 1e6,
        )


def with_estimate(run: BenchRun, est: RunEstimate | None) -> BenchRun:
    if est is None:
        return run
    ratio_cost = (run.usd_per_1m_tokens / est.usd_per_1m_tokens
                  if run.usd_per_1m_tokens else None)
    return run.model_copy(update={
        "estimate": est,
        "ratio_output_tokens_per_s": run.output_tokens_per_s / est.output_tokens_per_s,
        "ratio_usd_per_1m_tokens": ratio_cost,
    })
