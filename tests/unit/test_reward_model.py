"""reward.kind=model: a tiny sequence-classification reward model built offline scores
samples exactly as transformers does when run directly; normalisation; chat template."""

import math

import pytest
import torch

from rlhf.batch import Sample
from rlhf.config import RewardConfig, RewardModelConfig
from rlhf.reward.actor import RewardActor
from rlhf.reward.model import RewardModelScorer, RunningMoments, build_tiny_reward_model


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory):
    return build_tiny_reward_model(tmp_path_factory.mktemp("rm") / "tiny-rm", task="addition")


SAMPLES = [("1+2=", "3"), ("1+2=", "12"), ("3+3=", ""), ("6+6=", "1212121212"), ("0+0=", "0")]


def _direct(path, pairs):
    """transformers run directly, one unpadded sequence at a time."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    out = []
    with torch.no_grad():
        for p, r in pairs:
            text = (
                tok.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                    tokenize=False,
                )
                if tok.chat_template
                else p + r
            )
            ids = tok(text, return_tensors="pt", add_special_tokens=False)
            out.append(model(**ids).logits[0, 0].item())
    return out


def test_scores_match_transformers_run_directly(rm_path):
    # batch_size 2: padded batches (left padding) must score like unpadded single sequences
    actor = RewardActor(
        RewardConfig(kind="model", model=RewardModelConfig(path=str(rm_path), batch_size=2)),
        "addition",
    )
    out = actor.score(
        [Sample(group_id=i, prompt=p, response=r) for i, (p, r) in enumerate(SAMPLES)]
    )
    want = _direct(rm_path, SAMPLES)
    assert [s.reward for s in out] == pytest.approx(want, abs=1e-5)
    assert len(set(round(s.reward, 6) for s in out)) == len(SAMPLES)  # not a constant
    assert not any("reward_error" in s.info for s in out)


def test_normalisation_uses_running_moments(rm_path):
    sc = RewardModelScorer(RewardModelConfig(path=str(rm_path), normalize=True))
    raw = _direct(rm_path, SAMPLES)
    got = [v for v, _ in sc.score([Sample(group_id=0, prompt=p, response=r) for p, r in SAMPLES])]
    mean = sum(raw) / len(raw)
    std = math.sqrt(sum((x - mean) ** 2 for x in raw) / len(raw))
    assert got == pytest.approx([(x - mean) / std for x in raw], abs=1e-4)
    # a second batch is normalised with the moments of both
    got2 = [
        v for v, _ in sc.score([Sample(group_id=0, prompt=p, response=r) for p, r in SAMPLES[:2]])
    ]
    both = raw + raw[:2]
    m2 = sum(both) / len(both)
    s2 = math.sqrt(sum((x - m2) ** 2 for x in both) / len(both))
    assert got2 == pytest.approx([(x - m2) / s2 for x in raw[:2]], abs=1e-4)


def test_running_moments_match_the_batch_formula():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(100, generator=g).tolist()
    rm = RunningMoments()
    for i in range(0, 100, 7):
        rm.update(xs[i : i + 7])
    t = torch.tensor(xs, dtype=torch.float64)
    assert rm.mean == pytest.approx(t.mean().item()) and rm.std == pytest.approx(
        t.std(unbiased=False).item()
    )


def test_chat_template_is_used_when_present(rm_path, tmp_path):
    from transformers import AutoTokenizer

    from rlhf.reward.model import render

    tok = AutoTokenizer.from_pretrained(rm_path)
    tok.chat_template = "{% for m in messages %}[{{ m['role'][0] }}]{{ m['content'] }}{% endfor %}"
    assert render(tok, "1+2=", "3") == "[u]1+2=[a]3"
    tok.chat_template = None
    assert render(tok, "1+2=", "3") == "1+2=3"


def test_a_model_with_several_labels_is_refused(rm_path, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    cfg = AutoConfig.from_pretrained(rm_path)
    cfg.num_labels = 3
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(tmp_path / "m3")
    AutoTokenizer.from_pretrained(rm_path).save_pretrained(tmp_path / "m3")
    with pytest.raises(ValueError, match="one output label"):
        RewardModelScorer(RewardModelConfig(path=str(tmp_path / "m3")))


def test_normalisation_moments_survive_a_checkpoint(rm_path):
    """A resumed scorer (state through JSON, as in trainer_state.json) normalises the next
    batch exactly as the uninterrupted one does; a fresh one does not."""
    import json

    cfg = RewardModelConfig(path=str(rm_path), normalize=True)
    first = [Sample(group_id=0, prompt=p, response=r) for p, r in SAMPLES]
    later = [Sample(group_id=0, prompt=p, response=r) for p, r in SAMPLES[:2]]
    sc = RewardModelScorer(cfg)
    sc.score(first)
    state = json.loads(json.dumps(sc.state()))
    assert state["moments"]["n"] == len(SAMPLES)
    resumed, fresh = RewardModelScorer(cfg), RewardModelScorer(cfg)
    resumed.load_state(state)
    want = [v for v, _ in sc.score(later)]
    assert [v for v, _ in resumed.score(later)] == pytest.approx(want, abs=1e-9)
    assert [v for v, _ in fresh.score(later)] != pytest.approx(want, abs=1e-3)
    # without normalize there is nothing to keep, and loading a saved state changes nothing
    plain = RewardModelScorer(RewardModelConfig(path=str(rm_path)))
    assert plain.state() == {"moments": None}
    plain.load_state(state)
    assert plain.moments is None


def test_the_reward_actor_checkpoints_its_scorers_state(rm_path):
    from rlhf.config import RewardConfig
    from rlhf.reward.actor import RewardActor

    cfg = RewardConfig(kind="model")
    cfg.model = RewardModelConfig(path=str(rm_path), normalize=True)
    actor = RewardActor(cfg, "addition")
    actor.score([Sample(group_id=0, prompt=p, response=r) for p, r in SAMPLES])
    state = actor.state()
    assert list(state.values())[0]["moments"]["n"] == len(SAMPLES)
    again = RewardActor(cfg, "addition")
    again.load_state(state)
    assert again.state() == state
