"""Adapter-only weight sync (model.lora): the engines load the base once, at start-up, and
after each update receive only the adapter's tensors, which vLLM serves as a LoRA adapter.

The tensors travel on the same bucketed gloo/NCCL group as full weights
(rlhf/rollout/weight_sync.py): the learner's `rollout_state()` is the adapter
(rlhf/models/lora.py adapter_state), so the weight meta, the bucket plan and the sender are
unchanged. On the engine side `VllmAdapterReceiver.receive_adapter` builds vLLM's LoRA model
from the received tensors, in the worker, and makes it the worker's active adapter under a new
adapter id before the sync returns: what vLLM does when a request first names an id, minus
writing and reading a file. `AdapterSlot` then hands vLLM a `LoRARequest` with that id, and the
next generate finds it loaded (bit for bit the logprobs of the same tensors loaded from a
folder). Where the worker has no LRU LoRA manager to register with, the receiver writes the
tensors as a PEFT adapter folder on the engine's own node instead (a few hundred KB to a few
MB; no shared filesystem needed), which vLLM reads at the next generate. Each load's folder
holds its adapter_config.json either way: the one config both paths read.

With model.lora.train_lm_head the state also carries the fully trained `lm_head.weight` (plain
HF name; vLLM 0.32 serves no adapter or modules_to_save on a causal LM's output layer): the
receiver loads it into the engine's base model in place, through the model's own weight loader
and the same load path as full weights (rlhf/rollout/engine_load.py) scoped to that one layer
(the CPU backend re-packs it after loading). The base then holds the trained head, so
the adapter on top of it gives the learner's policy. Every load gets a new adapter id, which
vLLM's LRU (max_loras=1) takes in place of the previous one; a folder load happens once, at the
next generate (`load_inplace=True` would instead re-read the folder on every scheduler step).
The request's name carries the weight version (`policy-v<version>`), and so does every Sample
it produced.

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

    def receive_adapter(self, folder: str, lora_id: int) -> str:
        """Receive the adapter (every tensor-parallel worker takes part in the collective)
        and install it as vLLM adapter `lora_id`, whose config is `folder`'s
        adapter_config.json; load a trained lm_head into the base model. Returns how the
        adapter got in: "tensors" (built and activated here, from the received tensors) or
        "folder" (saved into `folder`, which vLLM reads at the next generate)."""
        # Views of the receive buffers (on the GPU under NCCL), which the next sync
        # overwrites: the adapter is copied to the host, where vLLM keeps its adapters and
        # files are written; the base tensors are loaded (copied into the model) before this
        # returns.
        adapter, base = split_state(self._rlhf_sync.receive())
        adapter = {name: t.to("cpu", copy=True) for name, t in adapter.items()}
        if base:
            self._load_base(base)
        if self._register_adapter(folder, lora_id, adapter):
            return "tensors"
        from safetensors.torch import save_file

        if _tp_rank() == 0:  # one writer; each worker's LoRA manager reads the folder
            save_file(adapter, str(Path(folder) / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        return "folder"

    def _register_adapter(self, folder: str, lora_id: int, tensors: dict) -> bool:
        """Build vLLM's LoRAModel from the received tensors and make it the worker's active
        adapter under `lora_id`, now: what vLLM's LRUCacheWorkerLoRAManager.add_adapter does
        when a request names a new id, minus reading the weights from a file. The next
        generate then finds `lora_id` loaded and active and loads nothing. False where the
        worker has no such manager (the folder path then serves).

        vLLM APIs used (0.32): `model_runner.lora_manager` (LoRAModelRunnerMixin), its
        `_adapter_manager` (the LRUCacheLoRAModelManager it built around the model),
        `LoRAModel.from_lora_tensors`, `PEFTHelper.from_local_dir` / `validate_legal`, the
        adapter manager's `add_adapter`, `activate_adapter`, `remove_adapter`,
        `remove_oldest_adapter`, and `vllm.utils.gpu_sync_debug.gpu_sync_allowed`."""
        from vllm.lora.lora_model import LoRAModel
        from vllm.lora.peft_helper import PEFTHelper
        from vllm.lora.worker_manager import LRUCacheWorkerLoRAManager
        from vllm.utils.gpu_sync_debug import gpu_sync_allowed

        workers = getattr(self.model_runner, "lora_manager", None)
        manager = getattr(workers, "_adapter_manager", None)
        if not isinstance(workers, LRUCacheWorkerLoRAManager) or manager is None:
            return False
        # The arguments vLLM's own folder load passes (WorkerLoRAManager._load_adapter)
        helper = PEFTHelper.from_local_dir(folder, workers.max_position_embeddings)
        helper.validate_legal(workers.lora_config)
        mapper = getattr(manager.model, "hf_to_vllm_mapper", None)
        lora = LoRAModel.from_lora_tensors(
            lora_model_id=lora_id,
            tensors=tensors,
            peft_helper=helper,
            device="cpu",
            dtype=workers.lora_config.lora_dtype,
            model_vocab_size=workers.vocab_size,
            weights_mapper=mapper.get_rename_mapper() if mapper is not None else None,
            skip_prefixes=getattr(manager.model, "lora_skip_prefixes", None),
        )
        # A folder load refuses tensors of modules vLLM has no LoRA layer for; so does this,
        # before the current adapter is evicted, rather than serve part of the new one.
        served = set(manager.modules).union(*manager.packed_modules.values())
        unserved = sorted(set(lora.loras) - served)
        if unserved:
            raise ValueError(f"adapter tensors for modules vLLM serves no LoRA on: {unserved}")
        # vLLM's add_adapter runs its copies to the device under gpu_sync_allowed (its GPU
        # sync checker, off unless asked for); so does this
        with gpu_sync_allowed():
            manager.remove_adapter(lora_id)  # a failed earlier try at this id, as vLLM does
            if len(manager) + 1 > manager.capacity:  # max_loras=1: the previous load goes
                manager.remove_oldest_adapter()
            manager.add_adapter(lora)  # packs q/k/v and gate/up into vLLM's merged layers
            manager.activate_adapter(lora_id)  # into the stacked LoRA buffers the kernels read
        return True

    def adapter_ids(self) -> list[int]:
        """The adapter ids this worker holds, sorted (vLLM's list_loras gives a set)."""
        return sorted(self.list_loras())

    def _load_base(self, tensors: dict) -> None:
        """Load full tensors (HF names) into the base model, as the full-weights path loads
        every layer (rlhf/rollout/engine_load.py), touching only the layers that own them (the
        rest of the model, LoRA wrappers included, is not touched)."""
        from rlhf.rollout.engine_load import load_into_engine

        model = self.model_runner.get_model()
        layers = [model.get_submodule(name.rpartition(".")[0]) for name in tensors]
        load_into_engine(model, self.model_runner.model_config, tensors.items(), layers=layers)


class AdapterSlot:
    """The engine's current adapter: its folder and vLLM id per load, how it was installed,
    and the LoRARequest naming it."""

    def __init__(self, cfg: LoraConfig):
        self.cfg = cfg
        self.root = Path(tempfile.mkdtemp(prefix="rlhf-adapter-"))
        atexit.register(shutil.rmtree, self.root, ignore_errors=True)
        self.loads = 0  # adapter ids are 1, 2, ...: unique within this engine process
        self.request = None  # None until the first sync: the base alone
        self.source = None  # the last load's: "tensors" or "folder" (receive_adapter)

    def engine_args(self) -> dict:
        """What vLLM needs to serve one adapter on the base."""
        return dict(
            enable_lora=True,
            max_lora_rank=vllm_max_lora_rank(self.cfg.rank),
            max_loras=1,
            worker_extension_cls=EXTENSION,
        )

    def next_load(self) -> tuple[str, int]:
        """The folder (its adapter_config.json written) and the adapter id of the next load."""
        folder = self.root / f"load-{self.loads + 1}"
        folder.mkdir(exist_ok=True)  # a failed receive may have left it
        write_adapter_config(folder, self.cfg, for_vllm=True)  # lm_head goes to the base
        return str(folder), self.loads + 1

    def installed(self, folder: str, version: int, source: str) -> None:
        """The adapter of weight `version` is in as `folder`'s id (`source`: how, see
        receive_adapter): serve it from the next call."""
        from vllm.lora.request import LoRARequest

        self.loads += 1
        self.source = source
        self.request = LoRARequest(f"policy-v{version}", self.loads, folder)
        for old in self.root.iterdir():  # vLLM reads a folder once, when its id first appears
            if str(old) != folder:
                shutil.rmtree(old, ignore_errors=True)
