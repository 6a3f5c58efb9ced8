"""The driver loop: one call per phase, the same for LLMs and gymnasium.

    next batch -> logprobs (old, ref, values) -> advantages -> update -> weight sync -> log

The roles are composed in, not subclassed: `pipeline` hands over each step's scored samples (a
RolloutPipeline for LLMs — prompt ledger, streaming rewards, bounded staleness, rlhf/pipeline.py
— or the lock-step GymRollout), `rollout` is the role the weights are sent to (VllmRollout or
GymRollout), `learners` is the DeepSpeed LearnerGroup.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import ray

from rlhf import algos, jsonl
from rlhf.batch import Batch, Sample, collate
from rlhf.checkpoint import Checkpoints, SavePolicy, export_due
from rlhf.config import AlgoConfig, TrainerConfig
from rlhf.faults import RunFailed, Stopped, WorkerLost, actor_index, rollout_errors
from rlhf.learner.group import LearnerGroup
from rlhf.metrics import PhaseTimer, RunLogger, console

log = logging.getLogger("rlhf")

LEARNER_PHASES = ("timing/logprobs_s", "timing/update_s", "timing/sync_s")
HEALTH_WINDOW = 20  # steps in a row of collapsed entropy / all-equal groups before a warning
ENTROPY_FLOOR = 0.01  # nats per token


class Trainer:
    def __init__(
        self,
        cfg: TrainerConfig,
        algo: AlgoConfig,
        *,
        pipeline,
        rollout,
        learners: LearnerGroup,
        logger: RunLogger,
        run_dir: Path,
        evaluator=None,
        evaluator_rewards=None,
    ):
        """evaluator: an rlhf.evaluation.Evaluator (LLM runs), scoring with `evaluator_rewards`."""
        self.cfg, self.algo = cfg, algo
        self.pipeline, self.rollout, self.learners, self.logger = (
            pipeline,
            rollout,
            learners,
            logger,
        )
        self.run_dir = run_dir
        self.checkpoints = Checkpoints(run_dir / "checkpoints", cfg.keep_last)
        self.timer = PhaseTimer()
        self.step_index, self.version = 0, 0
        # The algorithm is chosen once, here.
        self.advantage_fn = algos.ADVANTAGE_ESTIMATORS.get(algo.advantage)
        self.advantage_params = algos.AdvantageParams(gamma=algo.gamma, lam=algo.lam)
        self.kl_estimator = algos.KL_ESTIMATORS.get(algo.kl_estimator)
        self.kl_ctrl = algos.KLController(algo.kl_coef, algo.kl_target, algo.kl_horizon)
        self.advantage_metrics: dict[str, float] = {}
        self.save_policy = SavePolicy(cfg.save_every, cfg.save_every_min)
        self.evaluator, self.evaluator_rewards = evaluator, evaluator_rewards
        self._skipped_in_a_row = 0
        self._bad_streak: dict[str, int] = {}
        self._warned: set[str] = set()
        self.restarts = 0  # rollout workers restarted after a crash, over the whole run
        self._fault_metrics: dict[str, float] = {}
        self._init_weight_sync()
        # The first rollout must come from the learner's initial weights (a gym runner builds
        # its own randomly initialised policy): send them once, as version 0.
        self.sync_weights(version=0)

    def _init_weight_sync(self) -> None:
        """A weight-sync group of learner rank 0 and every rollout worker (again after a
        worker restarted: a process group cannot replace a member)."""
        host, port = ray.get(self.learners.sync_address())
        meta = ray.get(self.learners.weight_meta())
        world_size = 1 + self.rollout.sync_ranks
        ray.get(
            self.learners.init_weight_sync(host, port, world_size)
            + self.rollout.init_weight_sync(
                host, port, world_size, meta, self.learners.cfg.sync_bucket_mb << 20
            )
        )

    # ------------------------------------------------------------------ the algorithm
    def step(self) -> tuple[dict[str, float], list[Sample]]:
        t = self.timer
        with t.phase("rollout"):  # the learner waits here for a full batch of scored groups
            samples, pipeline_metrics = self.next_batch()
        batch = collate(samples)
        with t.phase("logprobs"):
            batch = LearnerGroup.attach(batch, ray.get(self.learners.scores_for_update(batch)))
        with t.phase("advantage"):
            batch = self.compute_advantages(batch)
        with t.phase("update"):
            update = LearnerGroup.reduce(ray.get(self.learners.update(batch.learning_rows())))
        with t.phase("sync"):
            self.sync_weights()

        metrics = {
            **self.rollout.metrics(samples),
            **pipeline_metrics,
            **update,
            **self.advantage_metrics,
            **self.batch_metrics(batch),
            **t.pop(),
        }
        step_s = metrics["timing/step_s"]
        metrics["perf/samples_per_s"] = len(samples) / step_s
        if "rollout/tokens" in metrics:
            metrics["perf/tokens_per_s"] = metrics["rollout/tokens"] / step_s
        metrics["perf/learner_idle_frac"] = max(
            0.0, 1.0 - sum(metrics[k] for k in LEARNER_PHASES) / step_s
        )
        metrics["trainer/weight_version"] = float(self.version)
        metrics["fault/restarts"] = float(self.restarts)
        metrics.update(self._fault_metrics)
        self._fault_metrics = {}
        return metrics, samples

    # ------------------------------------------------------------------ faults
    def next_batch(self) -> tuple[list[Sample], dict[str, float]]:
        """The pipeline's next batch, recovering from rollout workers that die meanwhile."""
        while True:
            try:
                return self.pipeline.next_batch(self.step_index + 1, self.version)
            except WorkerLost as lost:
                self.recover(lost.index, lost.reason)

    def drain(self) -> None:
        """The pipeline's drain (before a checkpoint), recovering from rollout workers that die
        meanwhile: their prompts are re-issued, with the weights they were sent under (no sync
        happens in between), and drained too."""
        while True:
            try:
                return self.pipeline.drain()
            except WorkerLost as lost:
                self.recover(lost.index, lost.reason)

    def recover(self, worker: int, reason: str = "") -> None:
        """A rollout worker died: wait for Ray to restart it, rebuild the weight-sync group with
        the new process, send it the current weights, re-issue the prompts it held."""
        self.restarts += 1
        if self.restarts > self.cfg.max_restarts:
            raise RunFailed(
                f"rollout worker {worker} died, and the run already restarted "
                f"{self.restarts - 1} workers (trainer.max_restarts="
                f"{self.cfg.max_restarts}); resume from {self.checkpoints.latest()}"
            )
        start = time.perf_counter()
        console(
            f"fault: rollout worker {worker} died ({reason.splitlines()[0] if reason else '?'}); "
            f"waiting for its restart ({self.restarts}/{self.cfg.max_restarts})"
        )
        self._wait_until_up(worker)
        self._init_weight_sync()
        self._broadcast(self.version)
        reissued = self.pipeline.reissue(worker)
        seconds = time.perf_counter() - start
        console(
            f"fault: rollout worker {worker} is back after {seconds:.1f}s with weight version "
            f"{self.version}; re-issued the {reissued} prompts it held"
        )
        self._fault_metrics = {
            "fault/recovery_s": self._fault_metrics.get("fault/recovery_s", 0.0) + seconds,
            "fault/reissued_prompts": self._fault_metrics.get("fault/reissued_prompts", 0.0)
            + reissued,
        }

    def compute_advantages(self, batch: Batch) -> Batch:
        """Reward shaping (DAPO overlong penalty, KL penalty), advantages, the truncation mask
        and the off-policy correction weights; their metrics go to `self.advantage_metrics`."""
        a, mask, m = self.algo, batch.action_mask, {}
        rewards = batch.token_rewards
        if a.overlong_buffer > 0 and batch.truncated is not None:
            penalty = algos.overlong_penalty(
                mask.sum(-1), a.overlong_max_len, a.overlong_buffer, a.overlong_penalty
            )
            rewards = algos.add_sequence_reward(rewards, mask, penalty)
            m["algo/overlong_penalty_mean"] = float(penalty.mean())
        if a.kl_in_reward and batch.ref_logprobs is not None:
            kl = self.kl_estimator(batch.old_logprobs, batch.ref_logprobs)
            coef = a.kl_coef if a.kl_target is None else self.kl_ctrl.value
            rewards = algos.kl_penalty_rewards(rewards, kl, coef, mask)
            if a.kl_target is not None:
                self.kl_ctrl.update(float(algos.masked_mean(kl, mask)), n_steps=len(batch))
            m["algo/kl_coef"] = coef
        advantages, returns = self.advantage_fn(
            algos.AdvantageInputs(
                token_rewards=rewards,
                mask=mask,
                group_ids=batch.group_ids,
                values=batch.values,
                dones=batch.dones,
                last_values=batch.last_values,
                seq_rewards=batch.seq_rewards,
            ),
            self.advantage_params,
        )
        if a.normalize_advantages:
            advantages = algos.masked_whiten(advantages, mask)
        if a.mask_truncated and batch.truncated is not None:
            # Truncated responses still count in their group's baseline above; they are only
            # left out of the loss (DAPO's overlong filtering).
            mask = mask * (1 - batch.truncated).unsqueeze(-1).to(mask.dtype)
            m["algo/truncated_masked_frac"] = float(batch.truncated.mean())
        weights = None
        if batch.old_logprobs is not None:  # else the update measures them (rollout_is none)
            weights, is_metrics = algos.ROLLOUT_CORRECTIONS.get(a.rollout_is)(
                batch.old_logprobs,
                batch.rollout_logprobs,
                mask,
                a.rollout_is_level,
                a.rollout_is_cap,
            )
            m.update(is_metrics)
        self.advantage_metrics = m
        return replace(
            batch,
            advantages=advantages,
            returns=returns,
            action_mask=mask,
            is_weights=None if a.rollout_is == "none" else weights,
        )

    def _wait_until_up(self, worker: int, timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ray.get(self.rollout.workers[worker].node_id.remote())
                return
            except ray.exceptions.ActorUnavailableError:  # Ray is still restarting it
                if time.monotonic() > deadline:
                    raise RunFailed(
                        f"rollout worker {worker} did not come back within "
                        f"{timeout_s:.0f}s; resume from {self.checkpoints.latest()}"
                    ) from None
                time.sleep(0.5)
            except ray.exceptions.ActorDiedError as e:
                raise RunFailed(
                    f"rollout worker {worker} died and Ray could not restart it "
                    f"({e}); resume from {self.checkpoints.latest()}"
                ) from e

    def sync_weights(self, version: int | None = None) -> None:
        """Learner rank 0 broadcasts; every rollout worker loads in place. The engines then
        serve `version` (default: one more than before)."""
        self.version = self.version + 1 if version is None else version
        try:
            self._broadcast(self.version)
        except rollout_errors() as e:  # a worker died during the sync, or before it
            self.recover(self.rollout.index_of(e), f"during weight sync: {type(e).__name__}: {e}")

    def _broadcast(self, version: int) -> None:
        sending = self.learners.broadcast_weights()
        receiving = self.rollout.receive_weights(version)
        try:
            try:
                ray.get(receiving)
            except Exception:
                # One engine dying fails the others' receives too (their group lost a member,
                # learner.sync_timeout_s at the latest): raise the death, which the caller
                # recovers from, not a survivor's collective error that may come first.
                for ref in receiving:
                    try:
                        ray.get(ref)
                    except rollout_errors():
                        raise
                    except Exception:
                        pass
                raise
        finally:
            # The learner side fails too when a receiver is gone; wait for it either way, so
            # that the next sync starts from an idle learner.
            ray.wait(sending, num_returns=len(sending), timeout=60)
        ray.get(sending)

    @staticmethod
    def batch_metrics(batch: Batch) -> dict[str, float]:
        mask = batch.action_mask
        adv_mean = algos.masked_mean(batch.advantages, mask)
        out = {
            "algo/advantage_mean": float(adv_mean),
            "algo/advantage_std": float(
                algos.masked_mean((batch.advantages - adv_mean) ** 2, mask).sqrt()
            ),
        }
        # Without old logprobs the update took them from its own pass, and measured these two
        # there (LearnerWorker._old_metrics).
        if batch.old_logprobs is not None:
            # vLLM's logprobs vs the learner's for the same tokens and weights: should be
            # ~0 in float32; a drift means the engines serve other weights or numerics.
            out["rollout/logprob_diff"] = float(
                algos.masked_mean((batch.rollout_logprobs - batch.old_logprobs).abs(), mask)
            )
        if batch.ref_logprobs is not None and batch.old_logprobs is not None:
            out["algo/kl_ref"] = float(
                algos.masked_mean(
                    algos.KL_ESTIMATORS.get("k3")(batch.old_logprobs, batch.ref_logprobs), mask
                )
            )
        if batch.values is not None and batch.returns is not None:
            # How much of the return variance the critic (before this update) explains.
            out["algo/value_explained_var"] = float(
                algos.explained_variance(batch.values, batch.returns, mask)
            )
        return out

    # ------------------------------------------------------------------ the run
    def fit(self, resume_from: Path | None = None) -> dict[str, float]:
        """Train to trainer.total_steps (from `resume_from`, a checkpoint folder, when given);
        returns the logger's summary. Owns the step counter and the run's edges: the files the
        run appends to start at its first step, and the logger is finished with the exit code
        on every way out (success 0, a failure 1, a signal 128 + its number)."""
        total, exit_code = self.cfg.total_steps, 1
        try:
            self.step_index = 0 if resume_from is None else self.resume(resume_from)
            # Rows after the starting step were written by an attempt that got further than
            # its checkpoint (or, starting fresh, by an earlier attempt in this folder).
            jsonl.truncate_run(self.run_dir, self.step_index if resume_from is not None else -1)
            with _StopOnSignal() as stop:
                if self.step_index == 0:
                    self.evaluate()  # the untrained policy, the curve's first point
                while self.step_index < total:
                    metrics, samples = self.step()
                    self.step_index += 1
                    metrics.update(self.evaluate())
                    self.logger.log(self.step_index, metrics)
                    self.logger.log_samples(self.step_index, self.rollout.sample_rows(samples))
                    self._check_health(metrics)
                    if self.save_policy.due(self.step_index) and self.step_index < total:
                        self.save()
                    if stop.requested is not None:
                        # The step finished; keep it, then stop. Resume continues from here.
                        console(f"stopping: saved {self.save()}")
                        raise Stopped(stop.requested)
            if self.cfg.save_final or self.save_policy.due(total):
                self.save(final=True)
            exit_code = 0
        except Stopped as stop:
            exit_code = 128 + stop.signum
            raise
        except KeyboardInterrupt:  # a second signal: at once, without a checkpoint
            exit_code = 128 + signal.SIGINT
            raise
        except ray.exceptions.RayActorError as e:
            rank = actor_index(self.learners.actors, e)
            if rank is None:
                raise
            raise RunFailed(
                f"learner rank {rank} died at step {self.step_index + 1} ({e}); a "
                f"learner's state cannot be rebuilt mid-run: rerun the same command "
                f"to resume from {self.checkpoints.latest() or 'the start (no checkpoint yet)'}"
            ) from e
        finally:
            summary = self._teardown(exit_code)
        return summary

    def _teardown(self, exit_code: int) -> dict[str, float]:
        """The one place a run ends: the logger (summary, report.png, W&B with `exit_code`),
        then the timeline. After a failure their own errors are logged, not raised over it."""
        summary: dict[str, float] = {}
        errors: list[Exception] = []
        try:
            summary = self.logger.finish(make_report=self.cfg.report, exit_code=exit_code)
        except Exception as e:
            errors.append(e)
        if self.cfg.timeline:
            try:
                ray.timeline(filename=str(self.run_dir / "timeline.json"))
            except Exception as e:
                errors.append(e)
        if errors and exit_code == 0:
            raise errors[0]
        for e in errors:
            log.error("while ending a run that failed (exit code %d): %s", exit_code, e, exc_info=e)
        return summary

    def evaluate(self) -> dict[str, float]:
        """Held-out eval/* metrics when one is due (also appended to eval.jsonl, which holds
        step 0 too), else nothing."""
        if self.evaluator is None or not self.evaluator.due(self.step_index):
            return {}
        metrics = self.evaluator.run(self.rollout.workers, self.evaluator_rewards, self.step_index)
        jsonl.append(self.run_dir / jsonl.EVAL, [{"step": self.step_index, **metrics}])
        return metrics

    def _check_health(self, metrics: dict[str, float]) -> None:
        """Warn once when the policy stopped exploring (entropy collapsed) or no group carries
        a learning signal (all rewards equal) for HEALTH_WINDOW steps in a row; stop the run
        after trainer.max_skipped_updates non-finite updates in a row."""
        for key, bad, message in (
            (
                "algo/entropy",
                lambda v: v < ENTROPY_FLOOR,
                f"policy entropy below {ENTROPY_FLOOR}: the policy has collapsed onto fixed "
                f"answers and explores no more (raise algo.entropy_coef or rollout.temperature)",
            ),
            (
                "reward/all_equal_group_frac",
                lambda v: v >= 1.0,
                "every group's rewards are all equal: group-relative advantages are 0 and "
                "nothing is learned (check the reward function, or use rollout.filter_groups)",
            ),
        ):
            if key in metrics and key not in self._warned:
                self._bad_streak[key] = self._bad_streak.get(key, 0) + 1 if bad(metrics[key]) else 0
                if self._bad_streak[key] >= HEALTH_WINDOW:
                    console(f"warning: {HEALTH_WINDOW} steps in a row: {message}")
                    self._warned.add(key)
        self._check_numerics(metrics)

    def _check_numerics(self, metrics: dict[str, float]) -> None:
        """Updates the learners skipped for a non-finite loss or gradient: N in a row end the
        run (its last checkpoint holds finite weights: skipped updates never reach them)."""
        skipped = metrics.get("learner/skipped_updates", 0.0)
        self._skipped_in_a_row = self._skipped_in_a_row + 1 if skipped else 0
        if skipped and self._skipped_in_a_row == 1:
            console(
                f"warning: step {self.step_index}: a non-finite loss or gradient norm; the "
                f"update was skipped (weights unchanged)"
            )
        if self._skipped_in_a_row >= self.cfg.max_skipped_updates:
            raise RunFailed(
                f"{self._skipped_in_a_row} steps in a row ended in a non-finite loss "
                f"or gradient norm (last: step {self.step_index}); the weights are "
                f"those of the last finite update. Lower algo.lr or check the reward "
                f"scale; resume from {self.checkpoints.latest()}"
            )

    def save(self, final: bool = False) -> Path:
        # In-flight generation is finished first and its samples go into the checkpoint: they
        # were generated by older weights, so a resume could not regenerate them.
        self.drain()
        state = {
            "step": self.step_index,
            "version": self.version,
            "time": time.time(),
            "rollout": self.rollout.state(),
            "pipeline": self.pipeline.state(),
            "kl_ctrl": self.kl_ctrl.state_dict(),
        }
        export = None
        if export_due(self.cfg.export_hf, final) and self.rollout.exports_hf:
            export = lambda folder: ray.get(self.learners.export_hf(folder))  # noqa: E731
        path = self.checkpoints.save(
            self.step_index,
            lambda folder: ray.get(self.learners.save(folder, "state")),
            state,
            export_hf=export,
        )
        self.save_policy.saved()
        return path

    def restart(self, pipeline, logger: RunLogger, learner_state: str) -> None:
        """Begin a new run on the same actors: the learners reload `learner_state` (a folder
        written by LearnerGroup.save with tag 'init'), the engines get those weights as version
        0, and a fresh pipeline and logger take over. Lets benchmarks and tests compare runs
        without paying start-up for each."""
        self.pipeline.drain()  # nothing of the previous run may reach the next one
        ray.get(self.learners.load(learner_state, "init"))
        self.sync_weights(version=0)
        self.pipeline, self.logger = pipeline, logger
        self.save_policy = SavePolicy(self.cfg.save_every, self.cfg.save_every_min)

    def resume(self, folder: Path) -> int:
        """Restore a checkpoint folder; returns its step (fit's counter continues from it)."""
        state = Checkpoints.read_state(folder)
        ray.get(self.learners.load(str(Path(folder) / "learner"), "state"))
        self.rollout.load_state(state["rollout"])
        self.pipeline.load_state(state["pipeline"], state["step"])
        self.kl_ctrl.load_state_dict(state["kl_ctrl"])
        # The engines start from the base weights; give them the resumed ones.
        self.sync_weights(version=state["version"])
        print(f"resumed from {folder} at step {state['step']}", flush=True)
        return state["step"]


class _StopOnSignal:
    """First Ctrl-C or SIGTERM (a scheduler's preemption notice): finish the current step,
    save, stop. A second signal: stop at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.requested: int | None = None  # the signal number once one arrived
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum
        print(
            f"{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
            f"(send it again to stop at once)",
            flush=True,
        )

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        return False
