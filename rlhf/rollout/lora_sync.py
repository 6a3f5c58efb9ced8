"""Adapter-only weight sync (model.lora): the engines load the base once, at start-up, and
after each update receive only the adapter's tensors, which vLLM serves as a LoRA adapter.

The tensors travel on the same bucketed gloo/NCCL group as full weights
(rlhf/rollout/weight_sync.py): the learner's `rollout_state()` is the adapter
(rlhf/models/lora.py adapter_state), so the weight meta, the bucket plan and the sender are
unchanged. On the engine side `VllmAdapterReceiver.receive_adapter` writes them as a PEFT
adapter folder on the engine's own node (a few hundred KB to a few MB; no shared filesystem
needed), and `AdapterSlot` hands vLLM a new `LoRARequest` for it.

With model.lora.train_lm_head the state also carries the fully trained `lm_head.weight` (plain
HF name; vLLM 0.32 serves no adapter or modules_to_save on a causal LM's output layer): the
receiver loads it into the engine's base model in place, through the model's own weight loader
with vLLM's layerwise reload scoped to that one layer (the CPU backend repacks it after
loading), as the full-weights path loads every layer. The base then holds the trained head, so
the adapter on top of it gives the learner's policy. Every load gets a new adapter
id, so vLLM loads it once, at the next generate, and its LRU (max_loras=1) evicts the previous
one; `load_inplace=True` would instead re-read the folder on every scheduler step. The request's
name carries the weight version (`policy-v<version>`), and so does every Sample it produced.

A restarted engine starts from the base with no adapter (and the base's lm_head) and refuses
work until the trainer's re-sync sends it the current adapter and lm_head (rlhf/faults.py
NotSynced), as with full weights.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from rlhf.config import LoraConfig
from rlhf.models.lora import (
    ADAPTER_WEIGHTS,
    split_state,
    vllm_max_lora_rank,
    write_adapter_config,
)
from rlhf.rollout.weight_sync import VllmWeightReceiver, _tp_rank

EXTENSION = "rlhf.rollout.lora_sync.VllmAdapterReceiver"


class VllmAdapterReceiver(VllmWeightReceiver):
    """vLLM worker extension: the full-weights receiver plus the adapter's load."""

    def receive_adapter(self, folder: str) -> int:
        """Receive the adapter (every tensor-parallel worker takes part in the collective)
        and save it into `folder`, which already holds adapter_config.json; load a trained
        lm_head into the base model. Returns bytes."""
        from safetensors.torch import save_file

        # Views of the receive buffers (on the GPU under NCCL), which the next sync
        # overwrites: the adapter is copied to the host, where the file is written; the base
        # tensors are loaded (copied into the model) before this returns.
        adapter, base = split_state(self._rlhf_sync.receive())
        adapter = {name: t.to("cpu", copy=True) for name, t in adapter.items()}
        if _tp_rank() == 0:  # one writer; each worker's LoRA manager reads the folder
            save_file(adapter, str(Path(folder) / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        if base:
            self._load_base(base)
        tensors = [*adapter.values(), *base.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _load_base(self, tensors: dict) -> None:
        """Load full tensors (HF names) into the base model: the full-weights path's
        load_weights, with the layerwise reload on the layers that own them only (the rest of
        the model, LoRA wrappers included, is not touched)."""
        from vllm.model_executor.model_loader.reload import (
            finalize_layerwise_reload,
            initialize_layerwise_reload,
        )

        model = self.model_runner.get_model()
        layers = [model.get_submodule(name.rpartition(".")[0]) for name in tensors]
        for layer in layers:
            initialize_layerwise_reload(layer)
        model.load_weights(weights=tensors.items())
        for layer in layers:
            finalize_layerwise_reload(layer, self.model_runner.model_config)


class AdapterSlot:
    """The engine's current adapter: its folder per load and the LoRARequest naming it."""

    def __init__(self, cfg: LoraConfig):
        self.cfg = cfg
        self.root = Path(tempfile.mkdtemp(prefix="rlhf-adapter-"))
        atexit.register(shutil.rmtree, self.root, ignore_errors=True)
        self.loads = 0  # adapter ids are 1, 2, ...: unique within this engine process
        self.request = None  # None until the first sync: the base alone

    def engine_args(self) -> dict:
        """What vLLM needs to serve one adapter on the base."""
        return dict(
            enable_lora=True,
            max_lora_rank=vllm_max_lora_rank(self.cfg.rank),
            max_loras=1,
            worker_extension_cls=EXTENSION,
        )

    def next_folder(self) -> str:
        folder = self.root / f"load-{self.loads + 1}"
        folder.mkdir(exist_ok=True)  # a failed receive may have left it
        write_adapter_config(folder, self.cfg, for_vllm=True)  # lm_head goes to the base
        return str(folder)

    def installed(self, folder: str, version: int) -> None:
        """`folder` now holds the adapter of weight `version`: serve it from the next call."""
        from vllm.lora.request import LoRARequest

        self.loads += 1
        self.request = LoRARequest(f"policy-v{version}", self.loads, folder)
        for old in self.root.iterdir():  # vLLM reads a folder once, when its id first appears
            if str(old) != folder:
                shutil.rmtree(old, ignore_errors=True)
