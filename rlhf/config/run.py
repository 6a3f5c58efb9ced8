"""The run around the algorithm: placement.*, logger.*, trainer.*, ray.*."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rlhf.config.checks import ConfigError, one_of, positive


@dataclass
class PlacementConfig:
    """How actors are packed onto the cluster."""

    # disaggregated (own bundles) | colocated (rollout workers share learner bundles)
    mode: str = "disaggregated"
    # Ray placement strategy per group: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    strategy: str = "PACK"

    def check(self) -> None:
        one_of("placement.mode", self.mode, ["disaggregated", "colocated"])
        one_of(
            "placement.strategy", self.strategy, ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
        )


@dataclass
class WandbConfig:
    # online | offline | disabled; online without an API key falls back to offline
    mode: str = "offline"
    project: str = "rlhf"
    entity: str | None = None
    group: str = ""  # empty: the sweep folder in a multirun, none otherwise
    name: str = ""  # empty: '<experiment>-<algo>-s<seed>-<time>'
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    console_every: int = 1  # print a progress line every N steps
    samples_every: int = 20  # W&B sample table every N steps (0 = never)
    quiet: bool = True  # keep Ray's and vLLM's own logging out of the console

    def check(self) -> None:
        one_of("logger.wandb.mode", self.wandb.mode, ["online", "offline", "disabled"])
        positive("logger.console_every", self.console_every)
        positive("logger.samples_every", self.samples_every, allow_zero=True)


@dataclass
class TrainerConfig:
    total_steps: int = 200
    save_every: int = 0  # checkpoint every N steps (0 = by wall time only, see save_every_min)
    # Also checkpoint when this many minutes passed since the last save (0 = off): a crash
    # loses at most this much work whatever the step time.
    save_every_min: float = 5.0
    save_final: bool = True
    # Hugging Face export of the policy (config, safetensors, tokenizer, generation config) in
    # each checkpoint's hf/ folder: final (the last checkpoint only) | every | never.
    export_hf: str = "final"
    keep_last: int = 2  # checkpoints kept on disk
    resume: str = "auto"  # auto (latest in the run folder) | never | a checkpoint path
    report: bool = True  # write report.png at the end
    timeline: bool = False  # write timeline.json: a Chrome trace of every actor call (ray.timeline)
    # Rollout workers (vLLM engines, env runners) and reward actors that crash are restarted,
    # their weights re-synced and their prompts re-issued; more than this many restarts over
    # the run end it (a learner rank that dies always does: resume from the last checkpoint).
    max_restarts: int = 3
    # Updates skipped for a non-finite loss or gradient norm, in a row, that end the run.
    max_skipped_updates: int = 3

    def check(self) -> None:
        positive("trainer.total_steps", self.total_steps)
        positive("trainer.save_every", self.save_every, allow_zero=True)
        positive("trainer.save_every_min", self.save_every_min, allow_zero=True)
        positive("trainer.keep_last", self.keep_last)
        positive("trainer.max_restarts", self.max_restarts, allow_zero=True)
        positive("trainer.max_skipped_updates", self.max_skipped_updates)
        one_of("trainer.export_hf", self.export_hf, ["final", "every", "never"])
        if self.resume not in ("auto", "never") and not Path(self.resume).exists():
            raise ConfigError(
                "trainer.resume",
                f"{self.resume!r} is neither 'auto', 'never' nor an existing checkpoint folder",
            )


@dataclass
class RayConfig:
    address: str = ""  # empty starts a local cluster; 'auto' joins a running one
    num_cpus: float | None = None  # local cluster only; null = enough for the placement
    include_dashboard: bool = False
    dashboard_host: str = "127.0.0.1"  # never 0.0.0.0 unless you mean it

    def check(self) -> None:
        if self.num_cpus is not None:
            positive("ray.num_cpus", self.num_cpus)
