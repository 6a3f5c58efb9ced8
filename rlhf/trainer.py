"""The driver loop: one call per phase, the same for LLMs and gymnasium.

    next batch -> logprobs (old, ref, values) -> advantages -> update -> weight sync -> log

The roles are composed in, not subclassed: `pipeline` hands over each step's scored samples (a
RolloutPipeline for LLMs — prompt ledger, streaming rewards, bounded staleness, rlhf/pipeline.py
— or the lock-step GymRollout), `rollout` is the role the weights are sent to (VllmRollout or
GymRollout), `learners` is the DeepSpeed LearnerGroup.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import ray

from rlhf import algos
from rlhf.batch import Batch, Sample, collate
from rlhf.checkpoint import Checkpoints
from rlhf.config import AlgoConfig, TrainerConfig
from rlhf.learner.group import LearnerGroup
from rlhf.metrics import PhaseTimer, RunLogger

LEARNER_PHASES = ("timing/logprobs_s", "timing/update_s", "timing/sync_s")


class Trainer:
    def __init__(self, cfg: TrainerConfig, algo: AlgoConfig, *, pipeline, rollout,
                 learners: LearnerGroup, logger: RunLogger, run_dir: Path):
        self.cfg, self.algo = cfg, algo
        self.pipeline, self.rollout, self.learners, self.logger = pipeline, rollout, learners, logger
        self.run_dir = run_dir
        self.checkpoints = Checkpoints(run_dir / "checkpoints", cfg.keep_last)
        self.timer = PhaseTimer()
        self.step_index, self.version = 0, 0
        # The algorithm is chosen once, here.
        self.advantage_fn = algos.ADVANTAGE_ESTIMATORS.get(algo.advantage)
        self.advantage_params = algos.AdvantageParams(gamma=algo.gamma, lam=algo.lam)
        self.kl_estimator = algos.KL_ESTIMATORS.get(algo.kl_estimator)
        self._init_weight_sync()

    def _init_weight_sync(self) -> None:
        host, port = ray.get(self.learners.sync_address())
        meta = ray.get(self.learners.weight_meta())
        world_size = 1 + self.rollout.sync_ranks
        ray.get(self.learners.init_weight_sync(host, port, world_size)
                + self.rollout.init_weight_sync(host, port, world_size, meta,
                                                self.learners.cfg.sync_bucket_mb << 20))
        # The first rollout must come from the learner's initial weights (a gym runner builds
        # its own randomly initialised policy): send them once, as version 0.
        self.sync_weights(version=0)

    # ------------------------------------------------------------------ the algorithm
    def step(self) -> tuple[dict[str, float], list[Sample]]:
        t = self.timer
        with t.phase("rollout"):  # the learner waits here for a full batch of scored groups
            samples, pipeline_metrics = self.pipeline.next_batch(self.step_index + 1, self.version)
        batch = collate(samples)
        with t.phase("logprobs"):
            batch = LearnerGroup.attach(batch, ray.get(self.learners.compute_logprobs(batch)))
        with t.phase("advantage"):
            batch = self.compute_advantages(batch)
        with t.phase("update"):
            update = LearnerGroup.reduce(ray.get(self.learners.update(batch.learning_rows())))
        with t.phase("sync"):
            self.sync_weights()

        metrics = {**self.rollout.metrics(samples), **pipeline_metrics, **update,
                   **self.batch_metrics(batch), **t.pop()}
        step_s = metrics["timing/step_s"]
        metrics["perf/samples_per_s"] = len(samples) / step_s
        if "rollout/tokens" in metrics:
            metrics["perf/tokens_per_s"] = metrics["rollout/tokens"] / step_s
        metrics["perf/learner_idle_frac"] = max(0.0, 1.0 - sum(metrics[k] for k in LEARNER_PHASES) / step_s)
        metrics["trainer/weight_version"] = float(self.version)
        return metrics, samples

    def compute_advantages(self, batch: Batch) -> Batch:
        """Reward shaping (DAPO overlong penalty, KL penalty), advantages, the truncation mask
        and the off-policy correction weights; their metrics go to `self.advantage_metrics`."""
        a, mask, m = self.algo, batch.action_mask, {}
        rewards = batch.token_rewards
        if a.overlong_buffer > 0 and batch.truncated is not None:
            penalty = algos.overlong_penalty(mask.sum(-1), a.overlong_max_len, a.overlong_buffer,
                                             a.overlong_penalty)
            rewards = algos.add_sequence_reward(rewards, mask, penalty)
            m["algo/overlong_penalty_mean"] = float(penalty.mean())
        if a.kl_in_reward and batch.ref_logprobs is not None:
            kl = self.kl_estimator(batch.old_logprobs, batch.ref_logprobs)
            coef = a.kl_coef if a.kl_target is None else self.kl_ctrl.value
            rewards = algos.kl_penalty_rewards(rewards, kl, coef, mask)
            if a.kl_target is not None:
                self.kl_ctrl.update(float(algos.masked_mean(kl, mask)), n_steps=len(batch))
            m["algo/kl_coef"] = coef
        advantages, returns = self.advantage_fn(algos.AdvantageInputs(
            token_rewards=rewards, mask=mask, group_ids=batch.group_ids,
            values=batch.values, dones=batch.dones, last_values=batch.last_values,
            seq_rewards=batch.seq_rewards), self.advantage_params)
        if a.normalize_advantages:
            advantages = algos.masked_whiten(advantages, mask)
        if a.mask_truncated and batch.truncated is not None:
            # Truncated responses still count in their group's baseline above; they are only
            # left out of the loss (DAPO's overlong filtering).
            mask = mask * (1 - batch.truncated).unsqueeze(-1).to(mask.dtype)
            m["algo/truncated_masked_frac"] = float(batch.truncated.mean())
        weights, is_metrics = algos.ROLLOUT_CORRECTIONS.get(a.rollout_is)(
            batch.old_logprobs, batch.rollout_logprobs, mask, a.rollout_is_level, a.rollout_is_cap)
        m.update(is_metrics)
        self.advantage_metrics = m
        return replace(batch, advantages=advantages, returns=returns, action_mask=mask,
                       is_weights=None if a.rollout_is == "none" else weights)

    def sync_weights(self, version: Optional[int] = None) -> None:
        """Learner rank 0 broadcasts; every rollout worker loads in place. The engines then
        serve `version` (default: one more than before)."""
        self.version = self.version + 1 if version is None else version
        ray.get(self.learners.broadcast_weights() + self.rollout.receive_weights(self.version))

    @staticmethod
    def batch_metrics(batch: Batch) -> dict[str, float]:
        mask = batch.action_mask
        adv_mean = algos.masked_mean(batch.advantages, mask)
        out = {"algo/advantage_mean": float(adv_mean),
               "algo/advantage_std": float(algos.masked_mean((batch.advantages - adv_mean) ** 2,
                                                             mask).sqrt()),
               # vLLM's logprobs vs the learner's for the same tokens and weights: should be
               # ~0 in float32; a drift means the engines serve other weights or numerics.
               "rollout/logprob_diff": float(algos.masked_mean(
                   (batch.rollout_logprobs - batch.old_logprobs).abs(), mask))}
        if batch.ref_logprobs is not None:
            out["algo/kl_ref"] = float(algos.masked_mean(
                algos.KL_ESTIMATORS.get("k3")(batch.old_logprobs, batch.ref_logprobs), mask))
        if batch.values is not None and batch.returns is not None:
            # How much of the return variance the critic (before this update) explains.
            out["algo/value_explained_var"] = float(algos.explained_variance(
                batch.values, batch.returns, mask))
        return out

    # ------------------------------------------------------------------ the run
    def fit(self, resume_from: Optional[Path] = None) -> dict[str, float]:
        if resume_from is not None:
            self.resume(resume_from)
        total = self.cfg.total_steps
        try:
            with _StopOnInterrupt() as interrupt:
                while self.step_index < total:
                    metrics, samples = self.step()
                    self.step_index += 1
                    self.logger.log(self.step_index, metrics)
                    self.logger.log_samples(self.step_index, self.rollout.sample_rows(samples))
                    if self.cfg.save_every and self.step_index % self.cfg.save_every == 0:
                        self.save()
                    if interrupt.requested:
                        # The step finished; keep it, then stop. Resume continues from here.
                        print(f"interrupted: saved {self.save()}", flush=True)
                        self.logger.finish(make_report=self.cfg.report)
                        raise KeyboardInterrupt
            if self.cfg.save_final and not (self.cfg.save_every and total % self.cfg.save_every == 0):
                self.save()
        finally:
            if self.cfg.timeline:
                ray.timeline(filename=str(self.run_dir / "timeline.json"))
        return self.logger.finish(make_report=self.cfg.report)

    def save(self) -> Path:
        # In-flight generation is finished first and its samples go into the checkpoint: they
        # were generated by older weights, so a resume could not regenerate them.
        self.pipeline.drain()
        state = {"step": self.step_index, "version": self.version, "time": time.time(),
                 "rollout": self.rollout.state(), "pipeline": self.pipeline.state()}
        return self.checkpoints.save(
            self.step_index, lambda folder: ray.get(self.learners.save(folder, "state")), state)

    def resume(self, folder: Path) -> None:
        state = Checkpoints.read_state(folder)
        ray.get(self.learners.load(str(Path(folder) / "learner"), "state"))
        self.step_index = state["step"]
        self.rollout.load_state(state["rollout"])
        self.pipeline.load_state(state["pipeline"], self.step_index)
        # The engines start from the base weights; give them the resumed ones.
        self.sync_weights(version=state["version"])
        print(f"resumed from {folder} at step {self.step_index}", flush=True)


class _StopOnInterrupt:
    """First Ctrl-C: finish the current step, save, stop. Second Ctrl-C: stop at once."""

    def __enter__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("interrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort)",
              flush=True)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False
