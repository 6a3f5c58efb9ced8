"""The prompt ledger's bookkeeping (rlhf/ledger.py), without Ray."""

import json

import pytest

from rlhf.batch import Sample
from rlhf.ledger import Ledger, read_ledger


def test_a_prompt_goes_from_issue_to_one_final_row(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.issue(7, step=3)
    ledger.assign(7, engine=1)
    assert ledger.held_by(1) == [7]
    ledger.assign(7, engine=0)  # re-issued after engine 1 died
    ledger.generated(7, weight_version=2)
    assert ledger.held_by(0) == []  # generated: no longer held
    ledger.scored(7)
    group = [Sample(group_id=7, response_ids=[5, 6], reward=1.0), Sample(group_id=7, reward=0.0)]
    row = ledger.close(7, "trained", step=3, version=2, group=group)
    assert row["staleness"] == 0 and row["attempts"] == 2 and row["rewards"] == [1.0, 0.0]
    assert 7 not in ledger and read_ledger(tmp_path / "ledger.jsonl") == [row]
    ledger.issue(8, step=4)
    with pytest.raises(ValueError):
        ledger.close(8, "lost", step=4, version=3)  # not a final status
    with pytest.raises(ValueError):
        ledger.issue(8, step=5)  # an id is issued once


def test_resume_drops_later_rows_and_a_torn_last_line(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_text(
        "".join(json.dumps({"step": s, "prompt_id": s}) + "\n" for s in (1, 2, 3))
        + '{"step": 4, "pro'
    )  # the writer was killed mid-line
    assert [r["step"] for r in read_ledger(path)] == [1, 2, 3]
    ledger = Ledger(path)
    ledger.load_state(
        [{"prompt_id": 9, "issued_for": 3, "status": "scored", "weight_version": 2}], resumed_step=2
    )
    assert ledger[9].status == "scored"
    assert path.read_text() == "".join(
        json.dumps({"step": s, "prompt_id": s}) + "\n" for s in (1, 2)
    )
    ledger.close(9, "trained", step=3, version=3)  # the next row starts on a line of its own
    assert [r["prompt_id"] for r in read_ledger(path)] == [1, 2, 9]


def test_an_episode_group_row_has_turns_turn_rewards_versions_and_digests(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.issue(3, step=2)
    ledger.assign(3, engine=0)

    def episode(ids, mask, turn_rewards, versions, error=""):
        info = {"turns": len(versions), "turn_versions": versions, "env_error": error}
        return Sample(
            group_id=3,
            response_ids=ids,
            response_mask=mask,
            turn_rewards=turn_rewards,
            reward=sum(r for _, r in turn_rewards),
            weight_version=min(versions),
            info=info,
        )

    # two turns each; the second episode's turns straddle a weight sync (versions 1 then 2)
    group = [
        episode([5, 6, 90, 91, 7], [1, 1, 0, 0, 1], [(1, 0.0), (4, 1.0)], [2, 2]),
        episode([8, 90, 9], [1, 0, 1], [(0, 0.0), (2, 0.5)], [1, 2], "timeout"),
    ]
    for s in group:
        ledger.generated(3, s.weight_version)
    assert ledger[3].weight_version == 1  # the oldest turn of the group, whatever the order
    ledger.scored(3)
    row = ledger.close(3, "trained", step=2, version=2, group=group)
    assert row["turns"] == [2, 2]
    assert row["turn_rewards"] == [[0.0, 1.0], [0.0, 0.5]]
    assert row["turn_versions"] == [[2, 2], [1, 2]]
    assert row["env_errors"] == ["", "timeout"]
    assert row["rewards"] == [1.0, 0.5]
    assert row["weight_version"] == 1 and row["staleness"] == 1  # never understated
    assert read_ledger(tmp_path / "ledger.jsonl") == [row]

    # the digests change with a sampled token; `sampled` ignores the environment's tokens
    def close_again(pid, g):
        ledger.issue(pid, step=2)
        ledger.generated(pid, 2)
        return ledger.close(pid, "trained", step=2, version=2, group=g)

    other_env = [episode([5, 6, 80, 81, 7], [1, 1, 0, 0, 1], [(1, 0.0), (4, 1.0)], [2, 2])]
    other_sampled = [episode([5, 4, 90, 91, 7], [1, 1, 0, 0, 1], [(1, 0.0), (4, 1.0)], [2, 2])]
    same = close_again(4, group[:1])
    env_changed, sampled_changed = close_again(5, other_env), close_again(6, other_sampled)
    assert env_changed["sampled"] == same["sampled"] != sampled_changed["sampled"]
    assert len({same["responses"], env_changed["responses"], sampled_changed["responses"]}) == 3
    # single-turn groups keep the old row
    ledger.issue(7, step=2)
    ledger.generated(7, 2)
    plain = ledger.close(7, "trained", step=2, version=2, group=[Sample(group_id=7, reward=1.0)])
    assert "turns" not in plain and "sampled" not in plain
