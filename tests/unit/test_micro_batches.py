"""Token-budget micro-batching (learner.max_tokens_per_micro_batch): the packer keeps every row
once within the budget, the split reaches any count the ranks agree on, trimming keeps the
logprob alignment exact, two real gloo ranks agree on the count, and config validation names
the key. The DeepSpeed update's exactness is tests/integration/test_learner_packing.py."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

from rlhf.batch import Sample, collate
from rlhf.compose import compose
from rlhf.config import ConfigError, validate
from rlhf.learner.micro_batches import agree_on_count, pack_by_tokens, split_to_count


def long_tailed(n: int, seed: int, short=(4, 16), long=(100, 128), tail=0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    short_len = torch.randint(short[0], short[1] + 1, (n,), generator=g)
    long_len = torch.randint(long[0], long[1] + 1, (n,), generator=g)
    return torch.where(torch.rand(n, generator=g) < tail, long_len, short_len)


def cost(group, lengths):
    return len(group) * int(lengths[group].max())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("budget", [128, 300, 1024])
def test_pack_keeps_every_row_once_within_the_budget(seed, budget):
    lengths = long_tailed(64, seed)
    groups = pack_by_tokens(lengths, budget)
    rows = torch.cat(groups)
    assert sorted(rows.tolist()) == list(range(64))
    assert all(cost(g, lengths) <= budget for g in groups)
    assert all(bool((lengths[g][:-1] >= lengths[g][1:]).all()) for g in groups)  # longest first
    # Greedy on sorted rows: no group could have taken the next group's first row.
    for a, b in zip(groups, groups[1:]):
        assert (len(a) + 1) * int(lengths[a].max()) > budget
        assert int(lengths[a].min()) >= int(lengths[b].max())


def test_pack_spends_fewer_padded_tokens_than_fixed_rows():
    lengths = long_tailed(128, 0)
    groups = pack_by_tokens(lengths, 32 * 128)
    packed = sum(cost(g, lengths) for g in groups)
    fixed = 128 * int(lengths.max())  # 4 x 32 rows, all padded to the batch's longest row
    assert packed < 0.5 * fixed and len(groups) <= 4


def test_pack_rejects_a_row_longer_than_the_budget():
    with pytest.raises(ValueError, match="max_tokens_per_micro_batch"):
        pack_by_tokens(torch.tensor([3, 9, 2]), 8)


@pytest.mark.parametrize("count", [1, 5, 17, 40])
def test_split_to_count_reaches_the_count_and_keeps_rows(count):
    lengths = long_tailed(40, 1)
    groups = pack_by_tokens(lengths, 256)
    count = max(count, len(groups))
    out = split_to_count(groups, lengths, count)
    assert len(out) == count
    assert sorted(torch.cat(out).tolist()) == list(range(40))
    assert all(cost(g, lengths) <= 256 for g in out)
    with pytest.raises(ValueError):
        split_to_count(groups, lengths, 41)


def tiny_policy():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlhf.models.causal_lm import CausalLMPolicy

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
    )
    return CausalLMPolicy(Qwen2ForCausalLM(cfg).eval(), temperature=0.7)


def test_trimmed_micro_batch_scores_exactly_as_the_padded_rows():
    g = torch.Generator().manual_seed(0)
    samples = []
    for i, (p, r) in enumerate([(3, 2), (5, 30), (2, 1), (4, 0), (6, 7)]):
        ids = torch.randint(3, 50, (p + r,), generator=g).tolist()
        samples.append(
            Sample(
                group_id=i,
                prompt_ids=ids[:p],
                response_ids=ids[p:],
                rollout_logprobs=[-1.0] * r,
                reward=float(i),
            )
        )
    batch = collate(samples)
    batch.old_logprobs = torch.randn(batch.action_mask.shape, generator=g)
    policy = tiny_policy()
    rows = torch.tensor([4, 0, 2])  # the longest rows of this micro-batch: 13 tokens
    micro = batch.index(rows).trimmed()
    assert micro.input_ids.shape == (3, 13) and micro.action_mask.shape == (3, 12)
    assert micro.old_logprobs.shape == (3, 12) and micro.seq_rewards.tolist() == [4.0, 0.0, 2.0]
    assert torch.equal(micro.action_mask, batch.action_mask[rows, :12])
    assert batch.action_mask[rows, 12:].sum() == 0  # only padding was cut
    with torch.no_grad():
        full, _, _ = policy(batch.index(rows))
        cut, _, _ = policy(micro)
    mask = micro.action_mask.bool()
    assert torch.allclose(cut[mask], full[:, :12][mask], rtol=0, atol=1e-5)
    assert batch.trimmed() is batch  # the longest row already spans every column


def _agree(rank: int, port: int, counts: list[int], out):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(counts)
    )
    try:
        out.put((rank, agree_on_count(counts[rank])))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_agree_on_the_largest_count():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_agree, args=(r, port, [3, 7], out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results == {0: 7, 1: 7}
    assert agree_on_count(5) == 5  # no process group: its own count


def load(*overrides):
    return compose(*overrides, check=False)[0]


def test_config_accepts_a_budget_that_holds_the_longest_row():
    cfg = validate(load("+experiment=grpo"))
    assert cfg.learner.max_tokens_per_micro_batch == 0
    longest = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    cfg = validate(load("+experiment=grpo", f"learner.max_tokens_per_micro_batch={longest}"))
    assert cfg.learner.max_tokens_per_micro_batch == longest


@pytest.mark.parametrize(
    "extra", [["learner.max_tokens_per_micro_batch=-1"], ["learner.max_tokens_per_micro_batch=8"]]
)
def test_config_rejects_a_bad_budget_naming_the_key(extra):
    with pytest.raises(ConfigError) as e:
        validate(load("+experiment=grpo", *extra))
    assert e.value.key == "learner.max_tokens_per_micro_batch"


def test_config_rejects_a_budget_for_gym():
    with pytest.raises(ConfigError) as e:
        validate(load("+experiment=cartpole_ppo", "learner.max_tokens_per_micro_batch=64"))
    assert e.value.key == "learner.max_tokens_per_micro_batch"
