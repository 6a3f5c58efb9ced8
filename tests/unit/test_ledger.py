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
