"""One data-parallel learner rank: a DeepSpeed engine inside a Ray actor.

It scores batches (old/reference logprobs, values), applies the configured algorithm from
rlhf/algos.py with micro-batching and gradient accumulation, saves/loads checkpoints, and (rank
0) broadcasts weights to the rollout workers. The algorithm's functions are looked up once here,
at construction; the update loop calls them without branching on names.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from dataclasses import replace

import torch
from torch import Tensor

from rlhf import algos
from rlhf.batch import Batch
from rlhf.config import AlgoConfig, LearnerConfig, ModelConfig
from rlhf.learner.micro_batches import agree_on_count, pack_by_tokens, split_to_count
from rlhf.learner.old_logprobs import old_logprobs_from_update
from rlhf.learner.reduce import all_reduce_sum, group_metrics, group_totals
from rlhf.resolve import resolve_function
from rlhf.rollout.weight_sync import ParamMeta, WeightSyncGroup, describe, plan_buckets


def build_policy(
    model_cfg: ModelConfig,
    model_path: str,
    temperature: float,
    env_spec=None,
    with_critic: bool = False,
):
    """The trainable module: a causal LM (scored per token; with a critic for GAE) or an MLP
    actor-critic (gym)."""
    if model_cfg.kind == "causal_lm":
        from rlhf.models.causal_lm import CausalLMPolicy

        critic_path = (model_cfg.critic_path or model_path) if with_critic else None
        policy = CausalLMPolicy.from_pretrained(
            model_path, model_cfg.dtype, temperature, model_cfg.gradient_checkpointing, critic_path
        )
        if model_cfg.uses_lora:  # train an adapter on the frozen base (rlhf/models/lora.py)
            from rlhf.models.lora import add_adapter

            policy = add_adapter(policy, model_cfg.lora)
        return policy
    from rlhf.models.mlp import ActorCritic

    return ActorCritic(env_spec, model_cfg.mlp)


class LearnerWorker:
    """Wrapped with ray.remote by LearnerGroup."""

    def __init__(
        self,
        cfg: LearnerConfig,
        algo: AlgoConfig,
        model_cfg: ModelConfig,
        model_path: str,
        *,
        rank: int,
        world_size: int,
        temperature: float,
        total_steps: int,
        seed: int,
        grad_accum_steps: int,
        env_spec=None,
        threads: int = 0,
    ):
        if threads:  # the placement's (rlhf/placement.py Slot.threads); else Ray's num_cpus
            torch.set_num_threads(threads)
        self.cfg, self.algo, self.rank, self.world_size = cfg, algo, rank, world_size
        self.grad_accum_steps = grad_accum_steps  # micro-batches per optimizer step
        self._build = dict(
            model_cfg=model_cfg,
            model_path=model_path,
            temperature=temperature,
            total_steps=total_steps,
            seed=seed,
            env_spec=env_spec,
        )
        self.sync: WeightSyncGroup | None = None
        self.updates = 0  # update() calls so far, checkpointed: paces the diagnostics

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port: rank 0's answer is the rendezvous for all ranks."""
        import ray

        from rlhf.rollout.weight_sync import free_port

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the data-parallel group (collective: all ranks at once) and build the engine."""
        import deepspeed

        cfg, algo, b = self.cfg, self.algo, self._build
        model_cfg, model_path, temperature = b["model_cfg"], b["model_path"], b["temperature"]
        total_steps, seed, env_spec = b["total_steps"], b["seed"], b["env_spec"]
        use_cuda = cfg.gpus_per_rank > 0
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0",
        )
        deepspeed.init_distributed(
            dist_backend="nccl" if use_cuda else "gloo", auto_mpi_discovery=False, verbose=False
        )
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        )
        torch.manual_seed(seed)
        random.seed(seed + self.rank)
        self.shuffle_gen = torch.Generator().manual_seed(seed + self.rank)

        # GAE needs V(s): the LLM policy then carries a critic (the gym MLP always has one).
        policy = build_policy(
            model_cfg, model_path, temperature, env_spec, with_critic=algo.advantage == "gae"
        )
        self.has_critic = policy.has_critic
        # One optimizer step per batch: the update's own logprobs are the old ones
        # (rlhf/learner/old_logprobs.py); compute_logprobs then skips the policy's pass.
        self.old_from_update = old_logprobs_from_update(algo, self.has_critic)
        self.ds_config = self._deepspeed_config()
        optimizer_steps = total_steps * algo.epochs * algo.minibatches
        params = (
            policy.param_groups(algo.lr, algo.critic_lr or algo.lr)
            if hasattr(policy, "param_groups")
            else [p for p in policy.parameters() if p.requires_grad]
        )
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=policy,
            model_parameters=params,
            config=self.ds_config,
            lr_scheduler=(
                lambda opt: torch.optim.lr_scheduler.LambdaLR(
                    opt, lambda s: max(0.0, 1.0 - s / optimizer_steps)
                )
            )
            if algo.lr_schedule == "linear"
            else None,
        )
        # A frozen copy of the starting policy, only when a KL term needs it; with LoRA the
        # base itself (this module with the adapter off), no second copy.
        self.ref = None
        if algo.kl_coef > 0 and model_cfg.uses_lora:
            from rlhf.models.lora import BaseReference

            self.ref = BaseReference(self.engine)
        elif algo.kl_coef > 0:
            self.ref = (
                build_policy(model_cfg, model_path, temperature, env_spec).to(self.device).eval()
            )
            self.ref.requires_grad_(False)

        # A registered name, or 'package.module:function' with the same signature.
        self.policy_loss = (
            resolve_function(algo.policy_loss, key="algo.policy_loss")
            if ":" in algo.policy_loss
            else algos.POLICY_LOSSES.get(algo.policy_loss)
        )
        self.aggregate = algos.LOSS_AGGREGATIONS.get(algo.loss_agg)
        self.kl_estimator = algos.KL_ESTIMATORS.get(algo.kl_estimator)
        self.update_kl_estimator = algos.KL_ESTIMATORS.get("k3")  # _update_kl's diagnostic
        self.loss_params = algos.PolicyLossParams(
            clip_low=algo.clip_low,
            clip_high=algo.clip_high,
            dual_clip=algo.dual_clip,
            cov_ratio=algo.cov_ratio,
            clip_cov_lb=algo.clip_cov_lb,
            clip_cov_ub=algo.clip_cov_ub,
            kl_cov_coef=algo.kl_cov_coef,
            generator=torch.Generator().manual_seed(seed + 7919 * self.rank),
        )  # clip_cov's choice
        self.kl_loss_coef = 0.0 if algo.kl_in_reward else algo.kl_coef

    # ---------------------------------------------------------------- set-up
    def _deepspeed_config(self) -> dict:
        c, a = self.cfg, self.algo
        zero: dict = {"stage": c.zero_stage}
        if c.offload_optimizer and c.zero_stage > 0:
            zero["offload_optimizer"] = {"device": "cpu"}
        return {
            "train_micro_batch_size_per_gpu": c.micro_batch_size,
            "gradient_accumulation_steps": self.grad_accum_steps,
            "optimizer": {
                "type": "AdamW",
                "params": {
                    "lr": a.lr,
                    "weight_decay": a.weight_decay,
                    "eps": a.adam_eps,
                    # The fused/CPU-Adam kernels need a compiler toolchain per accelerator; plain
                    # torch AdamW runs everywhere and is fast enough at these sizes.
                    "torch_adam": True,
                },
            },
            "gradient_clipping": a.grad_clip,
            "zero_optimization": zero,
            "bf16": {"enabled": False},
            "fp16": {"enabled": False},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def weight_meta(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(name, shape, dtype) of every parameter the rollout workers load, in send order."""
        named = [(n, _full_view(p)) for n, p in self.engine.module.rollout_state()]
        return [(m.name, m.shape, m.dtype) for m in describe(named)]

    def init_weight_sync(self, host: str, port: int, world_size: int, bucket_bytes: int) -> None:
        """Every rank computes the same bucket plan (under ZeRO-3 all ranks gather each bucket);
        rank 0 also joins the weight-sync group as its root."""
        meta = [ParamMeta(*m) for m in self.weight_meta()]
        self.sync_buckets = plan_buckets(meta, bucket_bytes)
        if self.rank == 0:
            self.sync = WeightSyncGroup(
                host,
                port,
                0,
                world_size,
                self.device,
                meta,
                bucket_bytes,
                timeout_s=self.cfg.sync_timeout_s,
            )

    # ---------------------------------------------------------------- scoring
    def _micro_batches(self, batch: Batch) -> list[tuple[Tensor | slice, Batch]]:
        """(rows, micro-batch) pairs covering `batch`: learner.micro_batch_size rows each, or
        under learner.max_tokens_per_micro_batch rows packed by length within that budget and
        trimmed to their longest row, as many micro-batches on every rank (collective then)."""
        budget = self.cfg.max_tokens_per_micro_batch
        if not budget or batch.attention_mask is None:
            n = max(1, len(batch) // self.cfg.micro_batch_size)
            size = len(batch) // n
            return [(slice(i * size, (i + 1) * size), m) for i, m in enumerate(batch.split(n))]
        lengths = batch.attention_mask.sum(1).cpu()
        groups = pack_by_tokens(lengths, budget)
        groups = split_to_count(groups, lengths, agree_on_count(len(groups), self.device))
        return [(g, batch.index(g.to(batch.attention_mask.device)).trimmed()) for g in groups]

    @torch.no_grad()
    def compute_logprobs(self, batch: Batch, with_old: bool = True) -> dict[str, torch.Tensor]:
        """Old logprobs (and values, reference logprobs when configured) for this rank's shard;
        with_old=False (LearnerGroup when the update supplies them): the reference's only."""
        self.engine.eval()
        out: dict[str, list[torch.Tensor]] = {"old_logprobs": []} if with_old else {}
        if self.has_critic:
            out["values"] = []
        if self.ref is not None:
            out["ref_logprobs"] = []
        for rows, micro in self._micro_batches(batch.to(self.device)):
            scores = {}
            if with_old or self.has_critic:
                logprobs, _, values = self.engine(micro, with_entropy=False)
                scores = {"old_logprobs": logprobs, "values": values}
            if self.ref is not None:
                scores["ref_logprobs"] = self.ref(micro, with_entropy=False)[0]
            for k, v in scores.items():
                if k in out:
                    out[k].append((rows, v.cpu()))
        # Back into the batch's row order and width; columns a trimmed micro-batch did not
        # have are padding (0, masked).
        shape = batch.action_mask.shape
        full = {k: torch.zeros(shape, dtype=parts[0][1].dtype) for k, parts in out.items()}
        for k, parts in out.items():
            for rows, v in parts:
                full[k][rows, : v.shape[1]] = v
        return full

    # ---------------------------------------------------------------- update
    def update(self, batch: Batch) -> dict[str, float]:
        """`algo.epochs` passes over this rank's shard, `algo.minibatches` optimizer steps each,
        accumulating gradients over micro-batches. Returns mean metrics over micro-batches."""
        self.engine.train()
        a = self.algo
        batch = batch.to(self.device)
        micro_per_minibatch = self.grad_accum_steps
        if len(batch) != a.minibatches * micro_per_minibatch * self.cfg.micro_batch_size:
            raise ValueError(
                f"rank {self.rank} got {len(batch)} rows; expected algo.minibatches "
                f"x grad_accum_steps x micro_batch_size = {a.minibatches} x "
                f"{micro_per_minibatch} x {self.cfg.micro_batch_size}"
            )
        # No old logprobs in the batch: the update's own, detached (rlhf/learner/old_logprobs.py),
        # kept in the batch's row order for the diagnostics pass.
        own_old = batch.old_logprobs is None
        if own_old and not self.old_from_update:
            raise ValueError("update() needs old_logprobs unless old_logprobs_from_update holds")
        old = torch.zeros_like(batch.action_mask, dtype=torch.float32) if own_old else None
        minibatch_metrics: list[list[tuple[dict[str, float], float]]] = []
        grad_norms: list[float] = []
        skipped = 0
        for _ in range(a.epochs):
            order = torch.randperm(len(batch), generator=self.shuffle_gen).to(self.device)
            minibatches = batch.index(order).split(a.minibatches)
            # Each minibatch's totals over all its rows on all ranks (rlhf/learner/reduce.py):
            # the micro-batch losses of every rank add up to the minibatch's loss exactly.
            totals = group_totals(
                [algos.AggTotals.of(m.action_mask) for m in minibatches], self.device
            )
            for minibatch, mb_totals in zip(minibatches, totals):
                micros = self._micro_batches(minibatch)
                step_metrics, dropped = [], False
                for i, (rows, micro) in enumerate(micros):
                    last = i == len(micros) - 1
                    # Under a token budget the count varies per minibatch: say where the
                    # optimizer step is rather than rely on DeepSpeed's fixed
                    # gradient_accumulation_steps counter (ZeRO reads it in backward).
                    self.engine.set_gradient_accumulation_boundary(last)
                    loss, m, logprobs = self._loss(micro, mb_totals)
                    if own_old:  # one minibatch, one epoch: `order` maps its rows to the batch's
                        old[order[rows], : logprobs.shape[1]] = logprobs.detach().float()
                    # `loss` is this rank's share of the minibatch loss; DeepSpeed averages
                    # gradients over the ranks, so K x the share gives the minibatch gradient.
                    self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
                    if last and self.cfg.zero_stage == 0:
                        dropped = not self._grads_finite()
                    with self._optimizer_step_disabled() if dropped else contextlib.nullcontext():
                        self.engine.step()
                    step_metrics.append((m, float(micro.action_mask.sum())))
                norm = self.engine.get_global_grad_norm()
                norm = None if norm is None else float(norm)
                # A non-finite loss makes non-finite gradients on every rank (they are
                # all-reduced). Such a step is not applied -- ZeRO 1-3 skip it themselves on an
                # invalid norm, stage 0 via _optimizer_step_disabled -- so weights and optimizer
                # state are unchanged. Count it and keep its NaNs out of the metric means.
                if dropped or (norm is not None and not math.isfinite(norm)):
                    skipped += 1
                    continue
                minibatch_metrics.append(step_metrics)
                if norm is not None:
                    grad_norms.append(norm)
        out = group_metrics(minibatch_metrics, ADDITIVE_METRICS, self.device)
        self.updates += 1
        every = self.cfg.diagnostics_every
        # The first update too: a run's first progress lines show its KL (a bad lr shows at once).
        if every and (self.updates % every == 0 or self.updates == 1):
            out.update(self._update_kl(replace(batch, old_logprobs=old) if own_old else batch))
        if grad_norms:
            out["learner/grad_norm"] = sum(grad_norms) / len(grad_norms)
        out["learner/skipped_updates"] = float(skipped)
        out["learner/lr"] = float(self.engine.get_lr()[0])
        if self.has_critic and len(self.engine.get_lr()) > 1:
            out["learner/critic_lr"] = float(self.engine.get_lr()[1])
        return out

    def _grads_finite(self) -> bool:
        """Stage 0 only (ZeRO partitions the gradients): all ranks hold the same all-reduced
        gradients, so all ranks reach the same answer."""
        return all(
            bool(torch.isfinite(p.grad).all())
            for p in self.engine.module.parameters()
            if p.grad is not None
        )

    @contextlib.contextmanager
    def _optimizer_step_disabled(self):
        """ZeRO stage 0 has no overflow check in float32: around engine.step(), make the
        optimizer's step a no-op and report an overflow, so weights, Adam state and the LR
        schedule stay as they were (DeepSpeed advances the scheduler only when the optimizer
        reports no overflow, as ZeRO's does on an invalid norm) while it still zeroes the
        gradients and advances its micro-step counters."""
        opt = self.engine.optimizer
        opt.step = lambda *args, **kwargs: None  # instance attributes shadow the class's
        opt.overflow = True
        try:
            yield
        finally:
            del opt.step, opt.overflow

    @torch.no_grad()
    def _update_kl(self, batch: Batch) -> dict[str, float]:
        """Over the group's rows, after the update: algo/update_kl = KL(old || new), how far
        the update moved the policy (k3 estimate from the behaviour samples; the console's KL
        when there is no reference); algo/update_gain = mean_t A_t (log pi_new - log pi_old),
        > 0 when the update made above-baseline actions likelier (the policy objective
        improved on its own batch); with a critic, algo/value_update_gain = the value loss
        0.5 (V - R)^2 before minus after the update, > 0 when the critic fits its batch better.
        Token means over all ranks' rows (one collective)."""
        self.engine.eval()
        sums = torch.zeros(4, dtype=torch.float64)  # kl, gain, value gain, tokens
        for _, micro in self._micro_batches(batch):
            logprobs, _, values = self.engine(micro, with_entropy=False)
            mask = micro.action_mask
            # Samples come from the old policy: KL(old || new) is k3 with old as "the policy".
            kl = self.update_kl_estimator(micro.old_logprobs, logprobs)
            sums[0] += float(algos.masked_sum(kl, mask))
            sums[1] += float(
                algos.masked_sum(micro.advantages * (logprobs - micro.old_logprobs), mask)
            )
            if self.has_critic:
                before = algos.value_loss(micro.values, micro.values, micro.returns, mask, None)
                after = algos.value_loss(values, micro.values, micro.returns, mask, None)
                sums[2] += float(algos.masked_sum(before - after, mask))
            sums[3] += float(mask.sum())
        kl_sum, gain, v_gain, tokens = all_reduce_sum(sums.to(self.device)).tolist()
        tokens = max(tokens, 1.0)
        out = {"algo/update_kl": kl_sum / tokens, "algo/update_gain": gain / tokens}
        if self.has_critic:
            out["algo/value_update_gain"] = v_gain / tokens
        return out

    def _loss(
        self, micro: Batch, totals: algos.AggTotals
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        a, mask = self.algo, micro.action_mask
        logprobs, entropy, values = self.engine(micro)
        m = {}
        old = micro.old_logprobs
        if old is None:  # the update's own, detached (old_logprobs_from_update)
            old = logprobs.detach()
            m = self._old_metrics(micro, old)
        per_token, pg_metrics = self.policy_loss(
            logprobs, old, micro.advantages, mask, self.loss_params
        )
        if micro.is_weights is not None:  # off-policy correction (algos.ROLLOUT_CORRECTIONS)
            per_token = per_token * micro.is_weights
        pg_loss = self.aggregate(per_token, mask, totals)
        entropy_mean = self.aggregate(entropy, mask, totals)
        loss = pg_loss - a.entropy_coef * entropy_mean
        m.update({"algo/pg_loss": pg_loss.item(), "algo/entropy": entropy_mean.item()})
        if micro.ref_logprobs is not None:
            kl = self.aggregate(self.kl_estimator(logprobs, micro.ref_logprobs), mask, totals)
            loss = loss + self.kl_loss_coef * kl
            m["algo/kl"] = kl.item()
        if self.has_critic:
            v_loss = self.aggregate(
                algos.value_loss(values, micro.values, micro.returns, mask, a.value_clip),
                mask,
                totals,
            )
            loss = loss + a.value_coef * v_loss
            m["algo/value_loss"] = v_loss.item()
            m["algo/value_clip_frac"] = float(
                algos.value_clip_fraction(values, micro.values, micro.returns, mask, a.value_clip)
            )
        m.update({f"algo/{k}": float(v) for k, v in pg_metrics.items()})
        m["algo/loss"] = loss.item()
        # A share of the minibatch's value: `totals` are the whole minibatch's, all ranks'.
        return loss, m, logprobs

    @torch.no_grad()
    def _old_metrics(self, micro: Batch, old: Tensor) -> dict[str, float]:
        """Token means over the micro-batch of what the trainer measures from the old
        logprobs when a separate pass scored them (Trainer.batch_metrics, the rollout
        correction's metrics): group_metrics weighs them by tokens into the batch's means."""
        mask, m = micro.action_mask, {}
        if micro.rollout_logprobs is not None:
            m["rollout/logprob_diff"] = float(
                algos.masked_mean((micro.rollout_logprobs - old).abs(), mask)
            )
            a = self.algo
            _, is_metrics = algos.ROLLOUT_CORRECTIONS.get(a.rollout_is)(
                old, micro.rollout_logprobs, mask, a.rollout_is_level, a.rollout_is_cap
            )
            m.update(is_metrics)
        if micro.ref_logprobs is not None:
            m["algo/kl_ref"] = float(
                algos.masked_mean(self.update_kl_estimator(old, micro.ref_logprobs), mask)
            )
        return m

    # ---------------------------------------------------------------- weights
    def broadcast_weights(self) -> int:
        """All ranks call this (ZeRO-3 gathers are collective); rank 0 sends. Returns bytes."""
        import deepspeed

        named = list(self.engine.module.rollout_state())
        zero3 = self.cfg.zero_stage == 3
        sent = 0
        for bucket in self.sync_buckets:
            params = [named[i][1] for i in bucket]
            gather = (
                deepspeed.zero.GatheredParameters(params) if zero3 else contextlib.nullcontext()
            )
            with gather:
                if self.sync is not None:
                    sent += self.sync.send_bucket(bucket, params)
        return sent

    def state_checksum(self) -> float:
        """Sum of |w| over the full (gathered) parameters: ranks must agree after an update."""
        import deepspeed

        params = list(self.engine.module.parameters())
        ctx = (
            deepspeed.zero.GatheredParameters(params)
            if self.cfg.zero_stage == 3
            else contextlib.nullcontext()
        )
        with ctx:
            return float(sum(p.detach().double().abs().sum() for p in params))

    def optimizer_checksum(self) -> float:
        """Sum of |x| over this rank's optimizer state tensors (Adam moments, step counts):
        what a skipped update must leave unchanged."""
        opt = self.engine.optimizer
        inner = getattr(opt, "optimizer", opt)  # ZeRO wraps the torch optimizer
        total = 0.0
        for state in inner.state.values():
            for v in state.values():
                if torch.is_tensor(v):
                    total += float(v.detach().double().abs().sum())
                else:
                    total += abs(float(v))
        return total

    # ---------------------------------------------------------------- checkpoints
    def save(self, folder: str, tag: str) -> None:
        # The random streams go with the weights, so that a resumed run shuffles and samples
        # exactly as the uninterrupted one would have.
        self.engine.save_checkpoint(
            folder,
            tag=tag,
            save_latest=False,
            client_state={"rng": self._rng_state(), "updates": self.updates},
            # LoRA: the adapter and its optimizer state; the frozen base is model.path's
            exclude_frozen_parameters=self._build["model_cfg"].uses_lora,
        )
        # DeepSpeed writes client_state once, from rank 0, and every rank loads that copy: the
        # other ranks' streams (their shuffle order above all) would resume as rank 0's, and a
        # resumed run would differ from the uninterrupted one at float32 rounding from its
        # first update on. Each rank keeps its own streams in a file of its own.
        os.makedirs(os.path.join(folder, tag), exist_ok=True)
        torch.save(self._rng_state(), _rng_file(folder, tag, self.rank))

    def _rng_state(self) -> dict:
        return {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "shuffle": self.shuffle_gen.get_state(),
            "loss": self.loss_params.generator.get_state(),
        }

    def load(self, folder: str, tag: str) -> None:
        # DeepSpeed unpickles its checkpoint files with weights_only=False: arbitrary code from
        # a tampered file. Load them with weights_only=True, allowing only the few DeepSpeed
        # value types its checkpoints hold.
        self.engine.checkpoint_engine.load = _load_weights_only
        path, client_state = self.engine.load_checkpoint(
            folder, tag=tag, load_module_strict=not self._build["model_cfg"].uses_lora
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} in {folder}")
        self.updates = (client_state or {}).get("updates", 0)
        rng = (client_state or {}).get("rng")  # rank 0's (checkpoints before per-rank files)
        own = _rng_file(folder, tag, self.rank)
        if os.path.exists(own):
            rng = torch.load(own, weights_only=True)
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            self.shuffle_gen.set_state(rng["shuffle"])
            self.loss_params.generator.set_state(rng["loss"])

    def export_hf(self, folder: str) -> None:
        """All ranks call this (ZeRO-3 gathers are collective); rank 0 writes the policy as a
        Hugging Face folder (rlhf.checkpoint.write_hf_folder), one parameter gathered at a
        time so no rank holds more than the full model once. With LoRA: the merged model, and
        the PEFT adapter folder beside it (rlhf.models.lora.export_adapter)."""
        import deepspeed

        from rlhf.checkpoint import write_hf_folder

        if self._build["model_cfg"].kind != "causal_lm":
            raise ValueError("export_hf is for causal LM policies")
        zero3 = self.cfg.zero_stage == 3
        state = {}
        for name, p in self.engine.module.rollout_state():
            ctx = deepspeed.zero.GatheredParameters([p]) if zero3 else contextlib.nullcontext()
            with ctx:
                if self.rank == 0:
                    state[name] = p.detach().to("cpu", copy=True)
        if self.rank == 0 and self._build["model_cfg"].uses_lora:
            from rlhf.models.lora import export_adapter

            export_adapter(folder, state, self._build["model_path"], self._build["model_cfg"])
        elif self.rank == 0:
            write_hf_folder(
                folder, state, self._build["model_path"], self._build["model_cfg"].dtype
            )


# Metrics of _loss that are micro-batch shares of the minibatch's value (aggregated with the
# minibatch's group totals): they add up over micro-batches and ranks; the others are
# per-micro-batch token means (rlhf/learner/reduce.py group_metrics).
ADDITIVE_METRICS = frozenset(
    ("algo/loss", "algo/pg_loss", "algo/entropy", "algo/kl", "algo/value_loss")
)


def _rng_file(folder: str, tag: str, rank: int) -> str:
    """A learner rank's random streams in a checkpoint (LearnerWorker.save)."""
    return os.path.join(folder, tag, f"rng_rank_{rank:02d}.pt")


def _load_weights_only(path: str, map_location=None):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
        return torch.load(path, map_location=map_location, weights_only=True)


def _full_view(p: torch.Tensor) -> torch.Tensor:
    """Under ZeRO-3 a parameter is a partitioned stub; its full shape is `ds_shape`."""
    shape = getattr(p, "ds_shape", None)
    return torch.empty(shape, dtype=p.dtype, device="meta") if shape is not None else p
