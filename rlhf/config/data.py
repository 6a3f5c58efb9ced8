"""data.* (the prompts) and eval.* (held-out evaluation)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf.config.checks import ConfigError, data_file, in_range, one_of, positive


@dataclass
class DataConfig:
    """Prompts. Empty `path` means the built-in synthetic task named by `task`."""

    path: str = ""  # .jsonl / .json / .parquet / .arrow file, or a datasets.save_to_disk folder
    task: str = "addition"  # built-in task (rlhf/tasks.py), used when path is empty
    # Column holding the prompt: a string, or a list of chat messages {"role", "content"}
    # rendered with the tokenizer's chat template (add_generation_prompt=True).
    prompt_key: str = "prompt"
    # Column passed to the reward function as `answer`; dots reach into nested records
    # (verl-style `reward_model.ground_truth`).
    answer_key: str = "answer"
    shuffle: bool = True
    # Prompts longer than this many tokens are dropped and counted (on_long_prompt=filter) or
    # an error; null = what the engine's context leaves after rollout.max_new_tokens.
    max_prompt_tokens: int | None = None
    on_long_prompt: str = "filter"  # filter | error
    # A row that is not valid UTF-8 / JSON or lacks a field of the right type: error (naming
    # file and line) or skip (counted and logged, up to max_bad_frac of the rows).
    on_bad_row: str = "error"  # error | skip
    max_bad_frac: float = 0.01  # with on_bad_row=skip: more bad rows than this share is an error

    def check(self) -> None:
        one_of("data.on_bad_row", self.on_bad_row, ["error", "skip"])
        one_of("data.on_long_prompt", self.on_long_prompt, ["filter", "error"])
        in_range("data.max_bad_frac", self.max_bad_frac, 0.0, 1.0)
        if self.max_prompt_tokens is not None:
            positive("data.max_prompt_tokens", self.max_prompt_tokens)
        if not self.answer_key or any(not part for part in self.answer_key.split(".")):
            raise ConfigError(
                "data.answer_key",
                f"{self.answer_key!r} is not a column name or a dotted path like "
                "'reward_model.ground_truth'",
            )
        if self.path:
            data_file("data.path", self.path)
        else:
            # pure Python for a built-in; reasoning_gym:<name> imports reasoning-gym to check it
            from rlhf.tasks import check_task_name

            try:
                check_task_name(self.task)
            except ValueError as e:
                raise ConfigError("data.task", str(e)) from None


@dataclass
class EvalConfig:
    """Held-out evaluation during training (rlhf/evaluation.py). It draws its own prompts
    with its own seeds and never touches the training data stream or its RNG."""

    every: int = 50  # evaluate every N trainer steps, plus step 0 and the last step; 0 = never
    path: str = ""  # held-out file (same formats and keys as data.*); empty = the built-in task
    num_prompts: int = 64  # prompts evaluated (a small finite task uses its whole table)
    samples: int = 8  # sampled responses per prompt, for pass@k and the sampled mean reward
    pass_k: list[int] = field(default_factory=lambda: [1, 4, 8])  # k values of pass@k (<= samples)
    temperature: float = 1.0  # sampling temperature of the sampled responses (greedy uses 0)
    correct_threshold: float = 1.0  # a response counts as correct for pass@k when reward >= this

    def check(self) -> None:
        positive("eval.every", self.every, allow_zero=True)
        positive("eval.num_prompts", self.num_prompts)
        positive("eval.samples", self.samples)
        positive("eval.temperature", self.temperature)
        for k in self.pass_k:
            if not 1 <= k <= self.samples:
                raise ConfigError(
                    "eval.pass_k",
                    f"every k must be in [1, eval.samples={self.samples}], got {list(self.pass_k)}",
                )
        if self.every and self.path:
            data_file("eval.path", self.path)
