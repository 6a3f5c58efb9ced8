"""A Ray actor that owns one vLLM engine (the CPU build here, the CUDA build on GPUs).

`generate` turns prompts into Samples with token ids, per-token logprobs of the sampled tokens,
the finish reason and the weight version that produced them. New weights arrive through the
weight-sync group (rlhf/rollout/weight_sync.py) and are loaded in place.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rlhf.batch import GenerationRequest, Sample
from rlhf.config import LoraConfig, RolloutConfig
from rlhf.faults import NotSynced, restarted_actor, worker_index


class VllmEngine:
    """Wrapped with ray.remote by the placement code; plain class so tests can read it."""

    def __init__(
        self,
        cfg: RolloutConfig,
        model_path: str,
        dtype: str,
        seed: int,
        index: int,
        lora: LoraConfig | None = None,
    ):
        """lora: serve the base plus the adapter the learners send (rlhf/rollout/lora_sync.py);
        None = the learners send full weights."""
        # Keep vLLM's engine core in this process: one fewer process per engine, and
        # collective_rpc reaches the worker extension directly.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM
        from vllm.platforms import current_platform

        if cfg.vllm.enforce_eager and current_platform.is_cpu():
            # Eager means no torch.compile at all here: vLLM still compiles its sampler's
            # token-rank kernel (ops/logprobs.py) with inductor on the first request that asks
            # for logprobs -- about 2 s of tracing and gcc on step 1, on the start-up's
            # critical path. Eager returns the same logprobs. (On GPUs the compiled kernel
            # saves a [tokens, vocab] copy, so it stays.)
            import torch._dynamo

            torch._dynamo.config.disable = True

        self.cfg, self.index, self.version = cfg, index, 0
        self.adapter = None
        lora_args = {}
        if lora is not None and lora.enabled:
            from rlhf.rollout.lora_sync import AdapterSlot

            self.adapter = AdapterSlot(lora)
            lora_args = self.adapter.engine_args()
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            seed=seed + 1000 * index,
            gpu_memory_utilization=cfg.vllm.gpu_memory_utilization,
            enforce_eager=cfg.vllm.enforce_eager,
            max_model_len=cfg.vllm.max_model_len,
            tensor_parallel_size=cfg.vllm.tensor_parallel_size,
            enable_prefix_caching=cfg.vllm.enable_prefix_caching,
            # Logprobs after temperature/top-p, i.e. of the distribution actually sampled from:
            # the learner divides its logits by the same temperature.
            logprobs_mode="processed_logprobs",
            worker_extension_cls="rlhf.rollout.weight_sync.VllmWeightReceiver",
            **lora_args,
        )
        self.tokenizer = self.llm.get_tokenizer()
        # After Ray restarted this actor it serves the base weights and belongs to no weight-sync
        # group: refuse work until the trainer has re-synced it (rlhf/faults.py).
        self.synced = not restarted_actor()
        self.sync_ready = False  # joined the current weight-sync group

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def generate(self, requests: list[GenerationRequest]) -> list[Sample]:
        """One Sample per request, in request order. Each request samples with its own seed,
        so its tokens depend only on (weights, prompt, seed), not on which engine serves it,
        what else is batched with it, or how often the engine restarted."""
        from vllm import SamplingParams, TokensPrompt

        if not self.synced:
            raise NotSynced(self.index)
        start = time.perf_counter()
        c = self.cfg
        params = [
            SamplingParams(
                n=1,
                seed=r.seed,
                logprobs=0,
                top_p=c.top_p,
                top_k=c.top_k,
                temperature=c.temperature if r.temperature is None else r.temperature,
                max_tokens=c.max_new_tokens if r.max_new_tokens is None else r.max_new_tokens,
            )
            for r in requests
        ]
        prompts = [
            TokensPrompt(prompt_token_ids=r.prompt_token_ids)
            if r.prompt_token_ids is not None
            else r.prompt
            for r in requests
        ]
        # LoRA: the current adapter's request (its name says the weight version), else None
        lora = self.adapter.request if self.adapter is not None else None
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=lora)
        elapsed = time.perf_counter() - start
        samples = []
        for r, out in zip(requests, outputs):
            o = out.outputs[0]
            token_ids = list(o.token_ids)
            samples.append(
                Sample(
                    group_id=r.prompt_id,
                    prompt_ids=list(out.prompt_token_ids),
                    response_ids=token_ids,
                    rollout_logprobs=[lp[t].logprob for t, lp in zip(token_ids, o.logprobs)],
                    prompt=r.prompt if r.prompt else (out.prompt or ""),
                    response=o.text,
                    answer=r.answer,
                    fields=r.fields,
                    finish_reason=o.finish_reason or "",
                    weight_version=self.version,
                    info={
                        "sample_index": r.sample_index,
                        "engine": self.index,
                        "engine_call_s": elapsed,
                    },
                )
            )
        return samples

    def init_weight_sync(
        self,
        host: str,
        port: int,
        rank_offset: int,
        world_size: int,
        meta: list[tuple[str, tuple[int, ...], str]],
        bucket_bytes: int,
    ) -> None:
        self.llm.collective_rpc(
            "init_weight_sync", args=(host, port, rank_offset, world_size, meta, bucket_bytes)
        )
        self.sync_ready = True

    def receive_weights(self, version: int) -> int:
        if not self.sync_ready:
            raise NotSynced(self.index)  # restarted: not in the group the learner sends to
        if self.adapter is not None:  # LoRA: only the adapter travels, the base stays
            folder = self.adapter.next_folder()
            self.llm.collective_rpc("receive_adapter", args=(folder,))
            self.adapter.installed(folder, version)
        else:
            self.llm.collective_rpc("receive_weights")
        self.synced = True
        self.llm.reset_prefix_cache()  # cached KV was computed by the old weights
        self.version = version
        return version

    def weight_version(self) -> int:
        return self.version

    def weight_checksum(self) -> float:
        return self.llm.collective_rpc("weight_checksum")[0]


class VllmRollout:
    """The rollout role for LLMs: the vLLM engines and their side of the weight sync. Which
    prompts they generate, and when, is the rollout pipeline's business (rlhf/pipeline.py).
    Methods return ObjectRefs; the driver calls ray.get."""

    exports_hf = True  # checkpoints can carry a Hugging Face export of the policy

    def __init__(
        self,
        cfg: RolloutConfig,
        model_path: str,
        dtype: str,
        seed: int,
        slots,
        runtime_env: dict | None = None,
        max_restarts: int = 0,
        lora: LoraConfig | None = None,
    ):
        """lora: the engines serve the base plus the learners' adapter (model.lora)."""
        from rlhf.placement import spawn

        self.cfg = cfg
        self.workers = spawn(
            VllmEngine,
            slots,
            lambda i: ((cfg, model_path, dtype, seed, i), {"lora": lora}),
            runtime_env,
            max_restarts=max_restarts,
        )
        # Every tensor-parallel worker of every engine is a receiver in the weight-sync group.
        self.sync_ranks = len(self.workers) * cfg.vllm.tensor_parallel_size

    def init_weight_sync(
        self, host: str, port: int, world_size: int, meta, bucket_bytes: int
    ) -> list[Any]:
        tp = self.cfg.vllm.tensor_parallel_size
        return [
            e.init_weight_sync.remote(host, port, 1 + i * tp, world_size, meta, bucket_bytes)
            for i, e in enumerate(self.workers)
        ]

    def receive_weights(self, version: int) -> list[Any]:
        return [e.receive_weights.remote(version) for e in self.workers]

    def index_of(self, error: Exception) -> int:
        return worker_index(self.workers, error)

    def metrics(self, samples: list[Sample]) -> dict[str, float]:
        lengths = [len(s.response_ids) for s in samples]
        return {
            "rollout/response_len_mean": sum(lengths) / len(lengths),
            "rollout/response_len_max": float(max(lengths)),
            "rollout/truncated_frac": sum(s.finish_reason == "length" for s in samples)
            / len(samples),
            "rollout/tokens": float(sum(lengths)),
        }

    def state(self) -> dict[str, Any]:
        return {}  # the engines keep nothing across steps; prompts are the pipeline's

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def sample_rows(self, samples: list[Sample], k: int = 8) -> list[dict[str, Any]]:
        """A few samples for the W&B table / samples.jsonl."""
        return [
            {
                "prompt": s.prompt,
                "response": s.response,
                "answer": s.answer,
                "reward": s.reward,
                "finish": s.finish_reason,
            }
            for s in samples[:k]
        ]
