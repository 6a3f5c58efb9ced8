"""Export a training checkpoint as a standard Hugging Face model folder.

    python scripts/export_hf.py outputs/.../checkpoints/step-000300 exported/
    # config and tokenizer from the base model folder:
    python scripts/export_hf.py CHECKPOINT OUT --base /path/to/base-model

The learner state of any ZeRO stage is consolidated on the CPU (DeepSpeed's zero_to_fp32 for
stages 1-3, the model-state file for stage 0), without Ray or a GPU. Every checkpoint file is
read with torch.load(weights_only=True), allowing only DeepSpeed's few value types. The base
model (config, tokenizer, generation config) is `--base`, or else the run's own model read from
the run folder's .hydra/config.yaml (the built-in tiny model is rebuilt from the cache).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

TAG = "state"  # the tag Trainer.save gives the learner checkpoint


def _safe_globals():
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def consolidated_state_dict(learner_dir: Path) -> dict:
    """Full fp32 parameters under the Hugging Face names (the policy's `lm.` prefix removed)."""
    import torch

    # zero_to_fp32 passes weights_only=False; this makes torch.load refuse pickled code anyway.
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    tag_dir = learner_dir / TAG
    if not tag_dir.is_dir():
        raise SystemExit(f"export_hf: {learner_dir} has no DeepSpeed checkpoint {TAG!r}")
    with torch.serialization.safe_globals(_safe_globals()):
        if list(tag_dir.glob("*optim_states.pt")) and list(tag_dir.glob("zero_pp_rank_*")):
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(str(learner_dir), tag=TAG)
        else:  # ZeRO stage 0: the full model is in the model-state file
            state = torch.load(
                tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True
            )["module"]
    return {k.removeprefix("lm."): v for k, v in state.items()}


def run_model(checkpoint: Path) -> tuple[str, str]:
    """(base model folder, dtype) of the run that wrote `checkpoint`."""
    from omegaconf import OmegaConf

    from rlhf.config import to_schema
    from rlhf.train import resolve_model_path

    hydra_cfg = checkpoint.parent.parent / ".hydra" / "config.yaml"
    if not hydra_cfg.is_file():
        raise SystemExit(f"export_hf: no {hydra_cfg}; pass --base MODEL_FOLDER")
    cfg = to_schema(OmegaConf.load(hydra_cfg))
    return resolve_model_path(cfg), cfg.model.dtype


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path, help="a step-N folder of a run")
    ap.add_argument("out", type=Path, help="the Hugging Face folder to write")
    ap.add_argument("--base", default="", help="model folder for config and tokenizer")
    ap.add_argument("--dtype", default="", help="float32 | bfloat16 | float16 (default: the run's)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from rlhf.checkpoint import write_hf_folder

    if not (args.checkpoint / "trainer_state.json").is_file():
        raise SystemExit(f"export_hf: {args.checkpoint} is not a complete checkpoint")
    base, dtype = (args.base, "float32") if args.base else run_model(args.checkpoint)
    write_hf_folder(
        args.out, consolidated_state_dict(args.checkpoint / "learner"), base, args.dtype or dtype
    )
    print(f"exported {args.checkpoint} -> {args.out}")


if __name__ == "__main__":
    main()
