"""LoRA adapters on the learner's causal LM (model.lora), through PEFT.

What this module owns:
- wrapping the policy's Hugging Face model with a PEFT LoRA adapter (`add_adapter`): the base
  is frozen, only the adapter's A/B matrices are trainable, so only they reach the optimizer;
- which tensors are the adapter and the names vLLM loads them under (`adapter_state`: PEFT's
  saved names, `base_model.model.<module>.lora_A.weight`, the `.default` adapter name dropped);
- with model.lora.train_lm_head, the output layer trained in full beside it (PEFT's
  modules_to_save): it travels under its plain HF name (`lm_head.weight`, `head_state`) into the
  engines' base model, since vLLM serves no adapter on it; `split_state` tells the two apart;
- the adapter as a PEFT folder (`write_adapter_folder`: adapter_config.json +
  adapter_model.safetensors, what `PeftModel.from_pretrained` and vLLM's `LoRARequest` read);
- the base model as the reference policy (`BaseReference`: the same module, adapter disabled);
- the merged export (`merged_state`: W + (alpha / r) B A, the plain HF parameter names);
- the pre-Ray checks: every target module exists as a linear layer of the model; a trained
  lm_head is the model's own, untied output layer.

The rollout side (the engines keep the base, receive only the adapter) is
rlhf/rollout/lora_sync.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from rlhf.config import ConfigError, LoraConfig

ADAPTER_NAME = "default"  # PEFT's name for the one adapter; dropped from the saved names
ADAPTER_DIR = "adapter"  # a checkpoint's PEFT adapter folder, beside its merged hf/ export
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
LM_HEAD = "lm_head"  # model.lora.train_lm_head: the output layer's module name (HF and vLLM)
PEFT_PREFIX = "base_model.model."  # every name in a saved PEFT adapter starts with it
# vLLM's LoRAConfig.max_lora_rank accepts only these (vllm/config/lora.py MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def peft_config(cfg: LoraConfig, for_vllm: bool = False):
    """The PEFT LoraConfig for `cfg` (learner, exports and engines build the same one).
    for_vllm: without modules_to_save (vLLM refuses an lm_head there; the engines get the
    trained lm_head in their base model instead)."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        modules_to_save=[LM_HEAD] if cfg.train_lm_head and not for_vllm else None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def add_adapter(policy, cfg: LoraConfig):
    """Wrap a CausalLMPolicy's `lm` with a fresh adapter (B = 0: the wrapped model computes
    exactly the base model's outputs until the first update); every base parameter is
    frozen. With cfg.train_lm_head PEFT also wraps lm_head in a ModulesToSaveWrapper: a
    trainable copy, and the original kept frozen for the adapter-off reference. Returns the
    same policy."""
    from peft import get_peft_model

    policy.lm = get_peft_model(policy.lm, peft_config(cfg))
    policy.lora = cfg
    return policy


def tiny_hf_config(model_cfg):
    """The built-in tiny model's architecture (a Qwen2, rlhf/models/tiny.py) for the module
    check, without building the model or its tokenizer."""
    from transformers import Qwen2Config

    t = model_cfg.tiny
    return Qwen2Config(
        vocab_size=64,
        hidden_size=t.hidden_size,
        num_hidden_layers=1,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_heads,
        intermediate_size=t.intermediate_size,
        tie_word_embeddings=False,  # as rlhf/models/tiny.py builds it
    )


def adapter_state(peft_model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The adapter's parameters under the names a saved PEFT adapter uses (and vLLM loads):
    PEFT's `get_peft_model_state_dict` drops the adapter name the same way."""
    marker = f".{ADAPTER_NAME}."
    for name, p in peft_model.named_parameters():
        if "lora_" in name and marker in name:
            yield name.replace(marker, "."), p


def head_state(peft_model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The fully trained modules (PEFT's modules_to_save copies: lm_head under
    model.lora.train_lm_head) under their plain HF names (`lm_head.weight`), which is what the
    engines' base model loads; nothing without train_lm_head."""
    marker = f".modules_to_save.{ADAPTER_NAME}."
    for name, p in peft_model.named_parameters():
        if marker in name:
            yield name.removeprefix(PEFT_PREFIX).replace(marker, "."), p


def split_state(
    named: Iterable[tuple[str, torch.Tensor]],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A LoRA policy's rollout state -> (adapter tensors under PEFT's names, base-model
    tensors under plain HF names: the trained lm_head, if any)."""
    adapter, base = {}, {}
    for name, t in named:
        (adapter if name.startswith(PEFT_PREFIX) else base)[name] = t
    return adapter, base


def peft_folder_state(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A rollout state under the names a saved PEFT adapter uses: a modules_to_save weight
    is `base_model.model.lm_head.weight` there (what PeftModel.from_pretrained loads)."""
    adapter, base = split_state(named)
    return {**adapter, **{PEFT_PREFIX + n: t for n, t in base.items()}}


def write_adapter_folder(
    folder: str | Path, tensors: dict[str, torch.Tensor], cfg: LoraConfig, for_vllm: bool = False
):
    """A PEFT adapter folder: adapter_config.json and adapter_model.safetensors."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_adapter_config(folder, cfg, for_vllm)
    save_file(
        {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
        str(folder / ADAPTER_WEIGHTS),
        metadata={"format": "pt"},
    )


def write_adapter_config(folder: str | Path, cfg: LoraConfig, for_vllm: bool = False) -> None:
    config = peft_config(cfg, for_vllm).to_dict()
    for key in ("target_modules", "modules_to_save"):  # sets in PEFT
        if config[key] is not None:
            config[key] = sorted(config[key])
    (Path(folder) / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, default=str))


class BaseReference:
    """The reference policy for a KL term: the learner's own module with the adapter
    switched off, i.e. the frozen base -- no second copy of the model. Called like a policy:
    `ref(batch, with_entropy=False) -> (logprobs, entropy, values)`."""

    def __init__(self, engine):
        self.engine = engine  # the DeepSpeed engine (ZeRO-3 gathers run in its forward)

    def __call__(self, batch, with_entropy: bool = False):
        with self.engine.module.lm.disable_adapter():
            return self.engine(batch, with_entropy=with_entropy)


def merged_state(
    base_path: str, adapter: dict[str, torch.Tensor], cfg: LoraConfig, dtype: str
) -> dict[str, torch.Tensor]:
    """The base model's parameters with the adapter merged in (plain HF names): what a
    merged Hugging Face export holds; `adapter` under a PEFT folder's names (a trained lm_head
    as `base_model.model.lm_head.weight` replaces the base's). Builds the base on the CPU from
    `base_path`."""
    from peft import get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(
        base_path, dtype=getattr(torch, dtype), use_safetensors=True
    )
    model = get_peft_model(lm, peft_config(cfg))
    result = set_peft_model_state_dict(model, adapter)
    if result.unexpected_keys:
        raise ValueError(f"adapter tensors the model has no place for: {result.unexpected_keys}")
    merged = model.merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds `rank`."""
    return next(r for r in VLLM_LORA_RANKS if r >= rank)


def linear_module_names(hf_config) -> set[str]:
    """Last name parts of every nn.Linear in the model `hf_config` describes (built on the
    meta device: no weights, no memory), except its output layer (lm_head): vLLM serves
    adapters on the linear layers inside the blocks, and refuses to load an adapter with an
    lm_head part ("expected target modules in {...} but received ['lm_head']", seen with vLLM
    0.32 and Qwen2 at the engine's first generate, after Ray started)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    head = model.get_output_embeddings()
    return {
        n.rsplit(".", 1)[-1]
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and m is not head
    }


def check_lm_head(cfg: LoraConfig, hf_config) -> None:
    """ConfigError naming model.lora.train_lm_head when the model's output layer is not an
    untied module named lm_head: a tied one shares its weight with the input embeddings, and
    vLLM then never loads an `lm_head.weight` (its Qwen2/Llama skip it), so the engines would
    silently serve the base's head."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    head = model.get_output_embeddings()
    name = next((n for n, m in model.named_modules() if m is head), None)
    if name != LM_HEAD:
        raise ConfigError(
            "model.lora.train_lm_head",
            f"the model's output layer is {name!r}, not {LM_HEAD!r}: only lm_head is supported",
        )
    tied = getattr(hf_config.get_text_config(), "tie_word_embeddings", False)
    if tied or head.weight is model.get_input_embeddings().weight:
        raise ConfigError(
            "model.lora.train_lm_head",
            "the model ties lm_head to its input embeddings (tie_word_embeddings=true); "
            "training it alone would untie them, and vLLM serves a tied model's lm_head from "
            "embed_tokens. Use an untied model or train_lm_head=false",
        )


def check_target_modules(cfg: LoraConfig, hf_config) -> None:
    """ConfigError naming model.lora.target_modules when one of them is not a linear layer
    of the model that vLLM can serve an adapter on (PEFT would raise only inside the learner,
    vLLM only at the first generate, after Ray started)."""
    linear = linear_module_names(hf_config)
    unknown = [m for m in cfg.target_modules if m not in linear]
    if unknown:
        raise ConfigError(
            "model.lora.target_modules",
            f"{unknown} are not linear layers of this model that vLLM serves an adapter on; "
            f"it has {sorted(linear)}",
        )


def export_adapter(folder: str | Path, state: dict[str, torch.Tensor], base_path: str, model_cfg):
    """A LoRA policy's export from its rollout state: the merged model as a Hugging Face folder
    at `folder` (what transformers and vLLM load as a plain model) and the PEFT adapter folder
    beside it (`<folder>/../adapter`, for PeftModel.from_pretrained, or vLLM's LoRARequest on
    the base; with train_lm_head the folder holds lm_head as modules_to_save, which PEFT loads
    and vLLM 0.32 refuses: serve the merged folder there)."""
    from rlhf.checkpoint import write_hf_folder

    folder = Path(folder)
    adapter = peft_folder_state(state.items())
    write_adapter_folder(folder.parent / ADAPTER_DIR, adapter, model_cfg.lora)
    merged = merged_state(base_path, adapter, model_cfg.lora, model_cfg.dtype)
    write_hf_folder(folder, merged, base_path, model_cfg.dtype)
