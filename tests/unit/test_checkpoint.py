"""rlhf/checkpoint.py: the save schedule, durability (fsync before the rename), a save that
dies midway leaves the previous checkpoint usable, keep-last-K, and the HF folder writer."""

import json
import os

import pytest
import torch

from rlhf import checkpoint
from rlhf.checkpoint import Checkpoints, SavePolicy, export_due, write_hf_folder


def test_save_policy_by_steps_and_wall_time():
    p = SavePolicy(every_steps=10, every_min=2.0, now=0.0)
    assert not p.due(3, now=60.0)
    assert p.due(10, now=60.0)  # by steps
    assert p.due(11, now=120.0)  # by time: 2 minutes since the last save
    p.saved(now=120.0)
    assert not p.due(12, now=200.0) and p.due(13, now=240.0)
    off = SavePolicy(every_steps=0, every_min=0.0, now=0.0)
    assert not any(off.due(s, now=1e9) for s in range(1, 50))


def test_export_due():
    assert export_due("every", final=False) and export_due("final", final=True)
    assert not export_due("final", final=False) and not export_due("never", final=True)


def _learners(folder):
    os.makedirs(folder)
    with open(os.path.join(folder, "weights.bin"), "wb") as f:
        f.write(b"w" * 100)


def test_everything_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        checkpoint.os,
        "fsync",
        lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd)),
    )
    monkeypatch.setattr(
        checkpoint.os,
        "replace",
        lambda a, b: (events.append(("replace", str(b))), real_replace(a, b)),
    )
    ck = Checkpoints(tmp_path / "ck", keep_last=2)
    final = ck.save(
        5,
        _learners,
        {"step": 5},
        export_hf=lambda f: os.makedirs(f) or open(os.path.join(f, "config.json"), "w").write("{}"),
    )
    rename = events.index(("replace", str(final)))
    synced = {p for kind, p in events[:rename] if kind == "fsync"}
    tmp = str(tmp_path / "ck" / ".tmp-step-000005")
    for rel in ("learner/weights.bin", "trainer_state.json", "hf/config.json", "learner", "hf", ""):
        assert os.path.normpath(os.path.join(tmp, rel)) in synced, rel
    assert ("fsync", str(tmp_path / "ck")) in events[rename:]  # the rename itself is made durable
    assert (final / "hf" / "config.json").is_file()


def test_a_save_that_dies_leaves_the_previous_checkpoint(tmp_path):
    ck = Checkpoints(tmp_path, keep_last=2)
    ck.save(1, _learners, {"step": 1})

    def dies(folder):
        _learners(folder)
        raise KeyboardInterrupt  # e.g. SIGKILL halfway through the learner write

    with pytest.raises(KeyboardInterrupt):
        ck.save(2, dies, {"step": 2})
    assert ck.latest().name == "step-000001"
    assert Checkpoints.read_state(ck.latest()) == {"step": 1}
    ck.save(3, _learners, {"step": 3})  # the next save clears the half-written folder
    assert not list(tmp_path.glob(".tmp-*"))
    assert [p.name for p in ck.complete()] == ["step-000001", "step-000003"]


def test_keep_last_and_resave_of_a_step(tmp_path):
    ck = Checkpoints(tmp_path, keep_last=2)
    for s in (1, 2, 3):
        ck.save(s, _learners, {"step": s})
    assert [p.name for p in ck.complete()] == ["step-000002", "step-000003"]
    ck.save(3, _learners, {"step": 3, "again": True})
    assert Checkpoints.read_state(ck.latest()) == {"step": 3, "again": True}
    assert not list(tmp_path.glob(".old-*"))


def test_write_hf_folder_loads_in_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from rlhf.models.tiny import build_tokenizer

    tok = build_tokenizer("0123456789+=")
    base = tmp_path / "base"
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(base)
    tok.save_pretrained(base)
    trained = {n: p.detach() + 0.01 for n, p in model.named_parameters()}  # "after training"
    write_hf_folder(tmp_path / "hf", trained, str(base), "float32")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    for n, p in loaded.named_parameters():
        assert torch.equal(p, trained[n]), n
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").chat_template == tok.chat_template
    assert (tmp_path / "hf" / "generation_config.json").is_file()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "float32"
