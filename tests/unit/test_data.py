"""Prompt files through rlhf/data.py: every format, chat messages, dotted answer keys, the
prompt-length filter, bad rows (error / skip / max_bad_frac) and the resumable cursor."""

import json

import datasets
import pytest

from rlhf.config import ConfigError, DataConfig
from rlhf.data import PromptSource, load_prompts, lookup, normalise_row
from rlhf.models.tiny import build_tokenizer

ROWS = [{"prompt": f"{a}+{b}=", "answer": a + b, "level": a} for a in range(7) for b in range(7)]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    """The tiny model's tokenizer (with its chat template) saved as a folder, no model needed."""
    path = tmp_path_factory.mktemp("tok")
    build_tokenizer("0123456789+=").save_pretrained(path)
    return str(path)


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cfg(path, **kw):
    return DataConfig(path=str(path), **kw)


def test_lookup_dotted_and_literal_keys():
    row = {"reward_model": {"ground_truth": "7"}, "a.b": 1}
    assert lookup(row, "reward_model.ground_truth") == "7"
    assert lookup(row, "a.b") == 1
    with pytest.raises(KeyError):
        lookup(row, "reward_model.style")


def test_normalise_row_reasons():
    c = DataConfig()
    assert normalise_row({"prompt": "1+1=", "answer": 2}, c)[0]["answer"] == "2"
    assert "no field 'prompt'" in normalise_row({"answer": 2}, c)[1]
    assert "no field 'answer'" in normalise_row({"prompt": "x"}, c)[1]
    assert "string or a number" in normalise_row({"prompt": "x", "answer": [1]}, c)[1]
    assert "chat messages" in normalise_row({"prompt": 3, "answer": 1}, c)[1]
    assert "message 0" in normalise_row({"prompt": [{"role": "user"}], "answer": 1}, c)[1]
    assert "JSON object" in normalise_row([1, 2], c)[1]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "arrow", "disk"])
def test_every_format_gives_the_same_prompts(tmp_path, fmt, tok_path):
    ds = datasets.Dataset.from_list(ROWS)
    path = tmp_path / f"p.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, ROWS)
    elif fmt == "json":
        path.write_text(json.dumps(ROWS))
    elif fmt == "parquet":
        ds.to_parquet(str(path))
    elif fmt == "arrow":
        ds.save_to_disk(str(tmp_path / "saved"))
        path = next((tmp_path / "saved").glob("*.arrow"))
    else:
        ds.save_to_disk(str(path))
    src = PromptSource(cfg(path, shuffle=False, max_prompt_tokens=16), 0, tok_path)
    got = src.next(len(ROWS))
    assert [p["prompt"] for p in got] == [r["prompt"] for r in ROWS]
    assert [p["answer"] for p in got] == [str(r["answer"]) for r in ROWS]
    assert got[3]["fields"] == {"level": 0}
    assert [p["group_id"] for p in got] == list(range(len(ROWS)))
    assert "prompt_token_ids" not in got[0]  # plain text: the engine tokenizes it


def test_chat_messages_render_with_the_template_and_nested_answer(tmp_path, tok_path):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "add"},
                {"role": "user", "content": r["prompt"]},
            ],
            "reward_model": {"ground_truth": str(r["answer"]), "style": "rule"},
        }
        for r in ROWS
    ]
    path = tmp_path / "chat.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    src = PromptSource(
        cfg(
            path,
            prompt_key="messages",
            answer_key="reward_model.ground_truth",
            shuffle=False,
            max_prompt_tokens=16,
        ),
        0,
        tok_path,
    )
    p = src.next(1)[0]
    tok = build_tokenizer("0123456789+=")
    assert p["prompt"] == "0+0=" and p["answer"] == "0"
    assert p["prompt_token_ids"] == tok.encode("0+0=", add_special_tokens=False)
    assert p["fields"] == {}  # the answer's top-level column is not repeated in fields


def test_long_prompts_are_filtered_and_counted_or_an_error(tmp_path, tok_path):
    rows = ROWS[:10] + [{"prompt": "1" * 30 + "=", "answer": 1}] * 3
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    src = PromptSource(cfg(path, max_prompt_tokens=8), 0, tok_path)
    assert len(src) == 10 and src.metrics()["data/long_prompts"] == 3
    assert all(len(p["prompt"]) <= 8 for p in src.next(40))
    with pytest.raises(ConfigError, match=r"p.jsonl:line 11: the prompt has 31 tokens"):
        PromptSource(cfg(path, max_prompt_tokens=8, on_long_prompt="error"), 0, tok_path)


def _bad_file(tmp_path):
    lines = [json.dumps(r).encode() for r in ROWS[:20]]
    lines.insert(4, b'{"prompt": "1+\xff=", "answer": 2}')  # line 5: invalid UTF-8
    lines.insert(9, b'{"prompt": "1+1=", "answer": ')  # line 10: broken JSON
    lines.insert(14, b'{"prompt": 12, "answer": 2}')  # line 15: wrong type
    lines.insert(16, b'{"prompt": "1+1="}')  # line 17: missing answer
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_bad_rows_name_file_and_line(tmp_path):
    path = _bad_file(tmp_path)
    with pytest.raises(ConfigError, match=r"bad.jsonl:line 5: not valid UTF-8") as e:
        load_prompts(cfg(path))
    assert e.value.key == "data.path"
    path.write_text("\n".join([json.dumps(ROWS[0]), '{"prompt": "x"}']))
    with pytest.raises(ConfigError, match=r"line 2: no field 'answer'"):
        load_prompts(cfg(path))
    (tmp_path / "l.json").write_text(
        '[{"prompt": "1=", "answer": 1},\n {"prompt": 5, "answer": 1}]'
    )
    with pytest.raises(ConfigError, match=r"l.json:row 2: field 'prompt' is neither"):
        load_prompts(cfg(tmp_path / "l.json"))


def test_skip_counts_bad_rows_and_respects_max_bad_frac(tmp_path, caplog):
    path = _bad_file(tmp_path)
    ds, bad = load_prompts(cfg(path, on_bad_row="skip", max_bad_frac=0.25))
    assert (len(ds), bad) == (20, 4)
    assert [r["answer"] for r in ds] == [str(r["answer"]) for r in ROWS[:20]]
    assert "skipped 4 bad rows of 24" in caplog.text
    with pytest.raises(ConfigError, match=r"4 of 24 rows are bad") as e:
        load_prompts(cfg(path, on_bad_row="skip", max_bad_frac=0.1))
    assert e.value.key == "data.max_bad_frac"


def test_an_edited_file_is_read_again_not_served_from_the_cache(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS[:5])
    assert len(load_prompts(cfg(path))[0]) == 5
    write_jsonl(path, ROWS[:7])
    assert len(load_prompts(cfg(path))[0]) == 7


def test_resume_continues_order_and_group_ids(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    a = PromptSource(cfg(path), seed=3)
    first = a.next(30)
    state = json.loads(json.dumps(a.state()))  # as a checkpoint stores it
    rest = a.next(40)  # crosses an epoch boundary (49 rows)
    b = PromptSource(cfg(path), seed=3)
    b.load_state(state)
    again = b.next(40)
    assert [(p["prompt"], p["group_id"]) for p in again] == [
        (p["prompt"], p["group_id"]) for p in rest
    ]
    assert again[0]["group_id"] == 30
    assert len({p["prompt"] for p in first + rest[:19]}) == 49  # one epoch = every row once
    write_jsonl(path, ROWS[:40])
    with pytest.raises(ConfigError, match="49 usable rows"):
        PromptSource(cfg(path), seed=3).load_state(state)


def test_builtin_task_stream_is_unchanged_by_a_state_round_trip():
    a = PromptSource(DataConfig(), seed=1)
    a.next(5)
    state = a.state()
    expect = a.next(8)
    b = PromptSource(DataConfig(), seed=1)
    b.load_state(state)
    assert b.next(8) == expect


def test_context_length_and_prompt_budget_are_checked_in_validate():
    from rlhf.config import RootConfig, validate

    cfg = RootConfig()
    cfg.rollout.max_new_tokens, cfg.rollout.vllm.max_model_len = 100000, 128
    with pytest.raises(ConfigError, match="max_model_len=128") as e:
        validate(cfg)
    assert e.value.key == "rollout.max_new_tokens"
    cfg = RootConfig()
    # null: what fits; the resolved value is in the returned copy, the input is left as it was
    assert validate(cfg).data.max_prompt_tokens == 128 - cfg.rollout.max_new_tokens
    assert cfg.data.max_prompt_tokens is None
    cfg = RootConfig()
    cfg.data.max_prompt_tokens = 125
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert e.value.key == "data.max_prompt_tokens"


@pytest.mark.parametrize(
    "env,var", [({"WANDB_MODE": ""}, "WANDB_MODE"), ({"WANDB_SILENT": "maybe"}, "WANDB_SILENT")]
)
def test_wandb_environment_that_would_crash_later_is_a_config_error(env, var):
    from rlhf.preflight import check_wandb_environment

    with pytest.raises(ConfigError, match="would make wandb.init fail") as e:
        check_wandb_environment(env)
    assert e.value.key == f"env {var}"
    check_wandb_environment({"WANDB_MODE": "offline", "WANDB_SILENT": "true"})  # fine
