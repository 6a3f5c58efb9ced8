"""Time to reward: `python -m rlhf.train +experiment=grpo` against TRL's `GRPOTrainer`.

    python scripts/bench.py --only time_to_reward [--reps 3] [--quick]      # the benchmark
    python scripts/bench_trl.py --child --t0 T --model PATH [--seed S] ...   # one TRL run

Both sides are fresh subprocesses launched from the same timer start; the clock stops when a
side's trailing mean of `reward/mean` over the last WINDOW steps first reaches the threshold
(0.8), at the end of that step (cap: 300 steps, the default run's length). Per seed (`--reps`
seeds, TRL then ours) it records seconds from launch and steps to the threshold, and the steady
s/step of those runs. Then s/step at the non-tiny `--sizes` (17M and 134M, random init, so the
reward stays ~0) with up to 64-token responses: 2 prompts x 8 samples per step (the default's
128 rows would make a 134M step take minutes on 2 cores; ours keeps one micro-batch per learner
rank), 3 steps per side, the first left out. `--quick`: one seed to reward 0.5 (cap 120 steps),
then 17M only, 2 steps. With `--reps 2` the whole benchmark took about 5.5 minutes on 2 cores.

The seeds share the prompt stream with TRL step for step, and the batch's mix of easy and hard
problems dominates the per-step reward: the two reward curves correlate at ~0.96 and usually
cross the threshold at the same step, so the seconds ratio is mostly the per-step cost plus
start-up.

The TRL side is matched to our composed config (`trl_config_kwargs` reads it, so a change to
conf/experiment/grpo.yaml moves both):

| setting                  | ours (+experiment=grpo)              | TRL GRPOConfig                    |
| ------------------------ | ------------------------------------ | --------------------------------- |
| model                    | rlhf.models.tiny.build_tiny_model    | the same folder, float32          |
| prompts                  | PromptSource(data, seed).next(16)... | Dataset "prompt" column, in order, shuffle_dataset=False |
| reward                   | task exact match                     | the same function (task.score)    |
| group size / prompts     | samples_per_prompt 8, 16 prompts     | num_generations 8, batch 128      |
| max new tokens, sampling | 8, temperature 1, top_p 1, no top_k  | max_completion_length 8, same     |
| advantage                | (r - mean_g) / (std_g + 1e-6)        | scale_rewards="group", + 1e-4     |
| loss                     | ppo_clip 0.2, token-mean, no KL      | epsilon 0.2, loss_type "dapo", beta 0 |
| optimizer                | torch AdamW lr 2e-4, wd 0, eps 1e-8  | adamw_torch, same; constant lr, no warm-up |
| updates per batch        | 1 (epochs 1, minibatches 1)          | num_iterations 1, grad accum 1    |
| grad clip, precision     | 1.0, float32                         | max_grad_norm 1.0, bf16/fp16 off  |
| generation               | vLLM CPU engine (1 core)             | HF generate in-process (use_vllm off) |
| held-out eval            | off (eval=off)                       | none                              |

Not matched: the layout (ours: Ray, 1 vLLM engine, 2 DeepSpeed ZeRO-2 learner ranks and a reward
actor on the 2 cores; TRL: one process using both cores through torch's threads), the sampling
RNG (each side draws its own tokens), and the std epsilon (1e-6 vs TRL's fixed 1e-4).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, SIZES, MetricsTail, grpo, interrupt, kill_after, launch_train, model_path

THRESHOLD = 0.8
WINDOW = 5  # trailing steps averaged before comparing with the threshold (same on both sides)
MAX_STEPS = 300  # the default run's length: a side that has not reached it by then stops
SPS_STEPS = 3  # s/step rows: steps per run; the first is warm-up, the rest are timed
SPS_TOKENS = 64  # max new tokens in the s/step rows
SPS_PROMPTS = 2  # prompts per step in the s/step rows (x 8 samples)
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}


# --------------------------------------------------------------------------------------------
# The matched TRL set-up (pure functions: the unit test checks them)
# --------------------------------------------------------------------------------------------


def prompt_rows(cfg, steps: int) -> list[dict[str, str]]:
    """The prompts our run draws in its first `steps` steps, in order: the same PromptSource
    (same data config and seed) the trainer's pipeline calls `next(prompts_per_step)` on."""
    from rlhf.data import PromptSource

    source = PromptSource(cfg.data, cfg.seed)
    rows = []
    for _ in range(steps):
        rows += [
            {"prompt": p["prompt"], "answer": p["answer"]}
            for p in source.next(cfg.rollout.prompts_per_step)
        ]
    return rows


def prompt_dataset(cfg, steps: int):
    import datasets

    rows = prompt_rows(cfg, steps)
    return datasets.Dataset.from_dict(
        {"prompt": [r["prompt"] for r in rows], "answer": [r["answer"] for r in rows]}
    )


class TaskReward:
    """The built-in task's reward as a TRL reward function: `(completions, answer, ...) -> list`.
    A class (not a closure) so that it pickles and has a `__name__` for TRL's metric names."""

    def __init__(self, task_name: str):
        from rlhf.tasks import get_task

        self.task = get_task(task_name)
        self.__name__ = f"{task_name}_reward"

    def __call__(self, completions: list[str], answer: list[str], **_: Any) -> list[float]:
        return [self.task.score(c, a) for c, a in zip(completions, answer)]


def trl_config_kwargs(cfg, *, output_dir: str, max_steps: int) -> dict[str, Any]:
    """GRPOConfig arguments that match our composed config `cfg` (see the module's table).
    Raises ValueError for a setting of ours that has no TRL equivalent here."""
    a, r = cfg.algo, cfg.rollout
    unmatched = []
    if a.advantage != "grpo":
        unmatched.append(f"algo.advantage={a.advantage}")
    if a.policy_loss != "ppo_clip":
        unmatched.append(f"algo.policy_loss={a.policy_loss}")
    if a.loss_agg != "token-mean":
        unmatched.append(f"algo.loss_agg={a.loss_agg}")
    if a.kl_coef or a.entropy_coef or a.dual_clip or a.rollout_is != "none" or a.overlong_buffer:
        unmatched.append("KL / entropy / dual clip / rollout IS / overlong terms")
    if a.epochs != 1 or a.minibatches != 1:
        unmatched.append(f"algo.epochs={a.epochs}, algo.minibatches={a.minibatches}")
    if r.max_staleness or r.filter_groups:
        unmatched.append("rollout.max_staleness / filter_groups")
    if unmatched:
        raise ValueError(f"no TRL equivalent wired for: {', '.join(unmatched)}")
    batch = r.prompts_per_step * r.samples_per_prompt
    return dict(
        output_dir=output_dir,
        max_steps=max_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        # one optimizer step per generated batch of prompts_per_step x samples_per_prompt
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=a.epochs,
        num_generations=r.samples_per_prompt,
        shuffle_dataset=False,  # RepeatSampler walks the dataset in order: our prompt stream
        max_completion_length=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=0 if r.top_k in (-1, 0) else r.top_k,  # ours: -1 disables; TRL: 0 disables
        use_vllm=False,  # HF generate in-process on the CPU
        # the loss: PPO clip, token-mean over the whole batch (one process, no accumulation:
        # "dapo" normalises by the batch's completion tokens), group-std advantages, no KL
        loss_type="dapo",
        scale_rewards="group",
        epsilon=a.clip_low,
        epsilon_high=a.clip_high,
        beta=a.kl_coef,
        entropy_coef=a.entropy_coef,
        mask_truncated_completions=a.mask_truncated,
        # the optimizer: torch AdamW, constant learning rate (ours: lr_schedule constant,
        # DeepSpeed with no scheduler), no warm-up
        learning_rate=a.lr,
        optim="adamw_torch",
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=a.adam_eps,
        weight_decay=a.weight_decay,
        max_grad_norm=a.grad_clip,
        lr_scheduler_type={"constant": "constant", "linear": "linear"}[a.lr_schedule],
        warmup_steps=0,
        # TRL's defaults that differ from ours
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        # logging: every step, nowhere but our callback
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        log_completions=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


# --------------------------------------------------------------------------------------------
# The TRL child (a fresh interpreter per run: imports and model load are on its clock)
# --------------------------------------------------------------------------------------------


def trl_child(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true")
    p.add_argument("--t0", type=float, required=True, help="the parent's launch time.time()")
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=THRESHOLD)
    p.add_argument("--window", type=int, default=WINDOW)
    p.add_argument("--max-steps", type=int, default=MAX_STEPS)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    t0 = args.t0
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    print(f"TRL_MARK imported {time.time() - t0:.3f}", flush=True)
    cfg, _ = grpo(f"seed={args.seed}", *args.overrides)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    out = tempfile.mkdtemp(prefix="bench-trl-")
    gargs = GRPOConfig(**trl_config_kwargs(cfg, output_dir=out, max_steps=args.max_steps))
    rewards: list[float] = []

    class Until(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            if not logs or "reward" not in logs:
                return
            rewards.append(float(logs["reward"]))
            trail = statistics.fmean(rewards[-args.window :])
            # full precision: the parent recomputes the trailing mean from these values
            print(
                f"TRL_STEP {state.global_step} {rewards[-1]!r} {trail!r} "
                f"{time.time() - t0:.3f} {logs.get('completions/mean_length', float('nan')):.3f}",
                flush=True,
            )
            if len(rewards) >= args.window and trail >= args.threshold:
                control.should_training_stop = True

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[TaskReward(cfg.data.task)],
        args=gargs,
        train_dataset=prompt_dataset(cfg, args.max_steps),
        processing_class=tok,
        callbacks=[Until()],
    )
    print(f"TRL_MARK trainer built {time.time() - t0:.3f}", flush=True)
    trainer.train()
    print(f"TRL_DONE {time.time() - t0:.3f}", flush=True)


# --------------------------------------------------------------------------------------------
# The parent: one run of each side
# --------------------------------------------------------------------------------------------


def _result(
    steps: list[tuple[int, float, float, float]],
    threshold: float,
    window: int,
    t0: float,
    end_wall: float,
) -> dict[str, Any]:
    """steps: (step, reward/mean, seconds since launch at the end of that step, mean response
    length in tokens)."""
    hit = None
    for i in range(window - 1, len(steps)):
        if statistics.fmean(s[1] for s in steps[i - window + 1 : i + 1]) >= threshold:
            hit = steps[i]
            break
    last = hit or (steps[-1] if steps else (0, float("nan"), end_wall - t0, float("nan")))
    ends = [s[2] for s in steps]
    return {
        "reached": hit is not None,
        "steps": last[0],
        "s": last[2],
        "first_step_s": ends[0] if ends else None,
        # wall seconds between consecutive step ends, the first step (warm-up) left out
        "step_s": [b - a for a, b in zip(ends, ends[1:])],
        "rewards": [round(s[1], 4) for s in steps],
        "response_len_mean": statistics.fmean(s[3] for s in steps) if steps else None,
    }


def run_trl(
    model: str,
    seed: int,
    overrides: list[str],
    *,
    threshold: float = THRESHOLD,
    window: int = WINDOW,
    max_steps: int = MAX_STEPS,
    timeout_s: float = 600,
) -> dict:
    t0 = time.time()
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--t0",
        repr(t0),
        "--model",
        model,
        "--seed",
        str(seed),
        "--threshold",
        str(threshold),
        "--window",
        str(window),
        "--max-steps",
        str(max_steps),
        *overrides,
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **OFFLINE_ENV},
    )
    watchdog = kill_after(proc, timeout_s)
    steps, lines, marks = [], [], {}
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        f = line.split()
        if f[:1] == ["TRL_STEP"]:
            steps.append((int(f[1]), float(f[2]), float(f[4]), float(f[5])))
        elif f[:1] == ["TRL_MARK"]:
            marks[" ".join(f[1:-1])] = float(f[-1])
    watchdog.cancel()
    proc.wait()
    if proc.returncode or not steps:
        raise RuntimeError(f"TRL run failed (exit {proc.returncode}):\n{''.join(lines[-40:])}")
    res = _result(steps, threshold, window, t0, time.time())
    res["marks"] = marks
    return res


def run_ours(
    seed: int,
    overrides: list[str],
    *,
    threshold: float = THRESHOLD,
    window: int = WINDOW,
    max_steps: int = MAX_STEPS,
    timeout_s: float = 600,
) -> dict:
    """`python -m rlhf.train +experiment=grpo` from launch; step ends are the moments each
    step's row appears in metrics.jsonl (polled every 10 ms); SIGINT once the threshold is hit."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench-ttr-"))
    metrics = run_dir / "metrics.jsonl"
    t0 = time.time()
    log = open(run_dir / "bench.log", "w")
    proc = launch_train(
        [
            "+experiment=grpo",
            f"seed={seed}",
            "eval=off",
            f"trainer.total_steps={max_steps}",
            "trainer.save_every_min=0",
            *overrides,
        ],
        run_dir,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=OFFLINE_ENV,
    )
    steps: list[tuple[int, float, float, float]] = []
    tail = MetricsTail(metrics)
    try:
        while True:
            alive = proc.poll() is None
            for row, now in tail.new_rows():
                steps.append(
                    (
                        int(row["step"]),
                        float(row["reward/mean"]),
                        now - t0,
                        float(row.get("rollout/response_len_mean", "nan")),
                    )
                )
            trail = [s[1] for s in steps[-window:]]
            if len(trail) == window and statistics.fmean(trail) >= threshold:
                break
            if not alive or time.time() - t0 > timeout_s:
                break
            time.sleep(0.01)
    finally:
        end = time.time()
        interrupt(proc, 60)
        log.close()
    if not steps:
        raise RuntimeError(
            f"our run wrote no metrics:\n{(run_dir / 'bench.log').read_text()[-3000:]}"
        )
    return _result(steps, threshold, window, t0, end)


# --------------------------------------------------------------------------------------------
# The rows for scripts/bench.py
# --------------------------------------------------------------------------------------------


def trl_missing() -> str | None:
    try:
        import trl  # noqa: F401
    except ImportError:
        return "not run: TRL is not installed (pip install '.[bench]')"
    return None


def bench_rows(args, Row) -> list:
    """time_to_reward rows: seconds and steps to the threshold (per seed), then s/step at 17M
    and 134M. `Row` is scripts/bench.py's table row."""
    missing = trl_missing()
    if missing:
        return [
            Row("time_to_reward", "grpo default, reward 0.8", "s", target="<= 1.0x", note=missing)
        ]
    quick = getattr(args, "quick", False)
    threshold = 0.5 if quick else THRESHOLD
    max_steps = 120 if quick else MAX_STEPS
    seeds = range(1 if quick else args.reps)
    crit = f"mean reward/mean of the last {WINDOW} steps >= {threshold:g}"
    secs = Row(
        "time_to_reward",
        f"grpo default, reward {threshold:g}",
        "s",
        target="<= 1.0x",
        note=f"launch -> end of the first step where the {crit} (both sides fresh "
        f"subprocesses, eval off, cap {max_steps} steps); baseline: TRL GRPOTrainer, "
        f"matched settings (scripts/bench_trl.py)",
    )
    steps = Row("time_to_reward", f"steps to reward {threshold:g}", "steps")
    per_step = Row(
        "time_to_reward",
        "s/step, 128 x <= 8 tokens (tiny)",
        "s/step",
        note="wall time between step ends, first step left out",
    )
    missed = {"ours": 0, "TRL": 0}
    runs = []
    for seed in seeds:
        path = model_path("tiny", seed)  # built (cached) before either clock starts
        b = run_trl(path, seed, [], threshold=threshold, max_steps=max_steps)
        o = run_ours(seed, [], threshold=threshold, max_steps=max_steps)
        for side, r, store in (("TRL", b, secs.baseline), ("ours", o, secs.ours)):
            store.append(r["s"])
            missed[side] += not r["reached"]
        steps.baseline.append(b["steps"])
        steps.ours.append(o["steps"])
        if b["step_s"] and o["step_s"]:
            per_step.baseline.append(statistics.median(b["step_s"]))
            per_step.ours.append(statistics.median(o["step_s"]))
        runs.append({"seed": seed, "ours": o, "trl": b})
        print(
            f"  time_to_reward seed {seed}: ours {o['s']:.1f}s / {o['steps']} steps "
            f"(reached {o['reached']}, first step at {o['first_step_s']:.1f}s), "
            f"TRL {b['s']:.1f}s / {b['steps']} steps (reached {b['reached']}, first step at "
            f"{b['first_step_s']:.1f}s)",
            flush=True,
        )
    if any(missed.values()):
        secs.note += f"; not reached within the cap (timed to the cap): {missed}"
    secs.extra["runs"] = runs
    rows = [secs, steps, per_step]

    # s/step at 17M / 134M (random init: the reward stays ~0, only the speed counts). A
    # smaller batch than the default's 128 rows keeps a 134M step near 10-20 s on 2 cores;
    # ours keeps one micro-batch per learner rank, as the default does.
    for size in ["17M"] if quick else [s for s in args.sizes if s != "tiny"]:
        n = 2 if quick else SPS_STEPS
        rows_per_step = SPS_PROMPTS * 8
        over = [
            *SIZES[size],
            f"rollout.max_new_tokens={SPS_TOKENS}",
            f"rollout.prompts_per_step={SPS_PROMPTS}",
            f"learner.micro_batch_size={rows_per_step // 2}",
        ]
        path = model_path(size, 0)
        row = Row(
            "time_to_reward",
            f"s/step {size}, {rows_per_step} x <= {SPS_TOKENS} tokens",
            "s/step",
            note=f"random init, seed 0, {n} steps per side, the first left out; mean "
            f"response tokens ours / TRL: {{}}",
        )
        b = run_trl(path, 0, over, threshold=2.0, max_steps=n)
        o = run_ours(0, over, threshold=2.0, max_steps=n)
        row.baseline += b["step_s"]
        row.ours += o["step_s"]
        row.note = row.note.format(f"{o['response_len_mean']:.1f} / {b['response_len_mean']:.1f}")
        row.extra = {"ours": o, "trl": b}
        print(
            f"  time_to_reward s/step {size}: ours {[round(x, 2) for x in o['step_s']]}, "
            f"TRL {[round(x, 2) for x in b['step_s']]}",
            flush=True,
        )
        rows.append(row)
    return rows


if __name__ == "__main__":
    if "--child" in sys.argv[1:]:
        trl_child(sys.argv[1:])
    else:
        sys.exit(__doc__)
