"""The run folder's JSON-lines files (rlhf/jsonl.py): one writer, one reader that leaves a torn
last line out, one truncation to a resumed step for every file a run appends to."""

import json
import math

import numpy as np
import pytest

from rlhf import jsonl


def test_rows_are_plain_json_one_per_line(tmp_path):
    path = tmp_path / "x.jsonl"
    jsonl.append(path, [{"step": 1, "a": np.float32(0.5), "b": float("nan")}])
    jsonl.append(path, [{"step": 2, "r": [1.0, math.inf], "n": {"k": np.int64(3)}, "t": (1, 2)}])
    jsonl.append(path, [])  # nothing to write: the file is untouched
    assert path.read_text().splitlines() == [
        '{"step": 1, "a": 0.5, "b": null}',
        '{"step": 2, "r": [1.0, null], "n": {"k": 3}, "t": [1, 2]}',
    ]
    assert jsonl.read(path)[1]["n"] == {"k": 3}
    assert jsonl.read(tmp_path / "missing.jsonl") == []


def test_a_torn_last_line_is_left_out_and_damage_before_it_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3}')  # the writer died mid-row 3
    assert jsonl.read(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"step": 2, "pro\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a JSON row"):
        jsonl.read(path)


def test_truncate_keeps_rows_up_to_the_step_byte_for_byte(tmp_path):
    path = tmp_path / "ledger.jsonl"
    rows = "".join(json.dumps({"step": s, "v": [s, 0.1]}, indent=None) + "\n" for s in (1, 2, 2, 3))
    path.write_text(rows + '{"step": 4, "v"')
    jsonl.truncate_after(path, 2)
    assert path.read_text() == "".join(rows.splitlines(keepends=True)[:3])
    inode = path.stat().st_ino
    jsonl.truncate_after(path, 2)  # nothing to drop: not rewritten
    assert path.stat().st_ino == inode
    jsonl.truncate_after(path, -1)  # a fresh start: nothing kept
    assert path.read_text() == ""
    jsonl.truncate_after(tmp_path / "absent.jsonl", 3)
    assert not (tmp_path / "absent.jsonl").exists()


def test_truncate_run_treats_every_appended_file_the_same(tmp_path):
    for name in jsonl.RUN_FILES:
        jsonl.append(tmp_path / name, [{"step": s} for s in (0, 1, 2, 3)])
        with open(tmp_path / name, "a") as f:
            f.write('{"step": 4')  # each writer killed mid-row
    (tmp_path / "other.jsonl").write_text('{"step": 9}\n')
    jsonl.truncate_run(tmp_path, 2)
    for name in jsonl.RUN_FILES:
        assert [r["step"] for r in jsonl.read(tmp_path / name)] == [0, 1, 2], name
        jsonl.append(tmp_path / name, [{"step": 3}])
        assert [r["step"] for r in jsonl.read(tmp_path / name)] == [0, 1, 2, 3], name
    assert (tmp_path / "other.jsonl").read_text() == '{"step": 9}\n'  # not a run file
