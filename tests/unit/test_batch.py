"""Sample -> Batch collation: the action layout, padding, split/cat, and gym flattening."""

import numpy as np
import pytest
import torch

from rlhf.batch import Batch, Sample, collate


def _llm_samples():
    return [
        Sample(
            group_id=0,
            prompt_ids=[5, 6, 7],
            response_ids=[8, 2],
            rollout_logprobs=[-0.1, -0.2],
            reward=1.0,
        ),
        Sample(
            group_id=0,
            prompt_ids=[5, 6],
            response_ids=[9, 10, 2],
            rollout_logprobs=[-1.0, -2.0, -3.0],
            reward=0.0,
        ),
        Sample(group_id=1, prompt_ids=[5], response_ids=[], reward=0.5),  # empty response
    ]


def test_llm_collate_aligns_actions_with_next_tokens():
    b = collate(_llm_samples())
    assert b.input_ids.shape == (3, 5) and b.action_mask.shape == (3, 4)
    assert b.input_ids[0].tolist() == [5, 6, 7, 8, 2] and b.attention_mask[0].tolist() == [1] * 5
    assert b.input_ids[1].tolist() == [5, 6, 9, 10, 2]
    # Action j scores input_ids[j + 1]: sample 0's response starts at token index 3 -> action 2.
    assert b.action_mask[0].tolist() == [0, 0, 1, 1]
    assert b.action_mask[1].tolist() == [0, 1, 1, 1]
    assert b.rollout_logprobs[1].tolist() == [0, -1.0, -2.0, -3.0]
    # The sequence reward sits on the last response token; an empty response has no actions.
    assert b.token_rewards[0].tolist() == [0, 0, 0, 1.0]
    assert b.token_rewards[1].tolist() == [0, 0, 0, 0]
    assert b.action_mask[2].sum() == 0 and b.token_rewards[2].sum() == 0
    assert b.group_ids.tolist() == [0, 0, 1]


def test_split_and_cat_round_trip():
    b = collate(_llm_samples() * 2)
    parts = b.split(3)
    assert [len(p) for p in parts] == [2, 2, 2]
    back = Batch.cat(parts)
    for name in ("input_ids", "action_mask", "token_rewards", "group_ids"):
        assert torch.equal(getattr(back, name), getattr(b, name))
    with pytest.raises(ValueError, match="equal parts"):
        b.split(4)


def _trajectory(group_id, T=4, obs_dim=3):
    rng = np.random.default_rng(group_id)
    return Sample(
        group_id=group_id,
        rollout_logprobs=list(rng.normal(size=T)),
        obs=rng.normal(size=(T, obs_dim)).astype(np.float32),
        actions=rng.integers(0, 2, size=T),
        step_rewards=np.ones(T, np.float32),
        dones=np.array([0, 1, 0, 0], np.float32),
        values=rng.normal(size=T),
        last_value=0.5,
    )


def test_gym_collate_and_flatten_steps():
    b = collate([_trajectory(0), _trajectory(1)])
    assert b.obs.shape == (2, 4, 3) and b.actions.dtype == torch.long
    assert b.action_mask.sum() == 8 and b.last_values.tolist() == [0.5, 0.5]
    b.advantages = torch.arange(8.0).reshape(2, 4)
    flat = b.learning_rows()
    assert len(flat) == 8 and flat.obs.shape == (8, 1, 3)
    assert flat.advantages[:, 0].tolist() == list(range(8))
    assert flat.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert torch.equal(flat.obs[5, 0], b.obs[1, 1])
