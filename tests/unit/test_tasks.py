import os
import pickle
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlhf.tasks import DEFAULT_TASK, TASKS, Problem, exact_match, get_task, task_reward


@pytest.mark.parametrize(
    "name, n, top",
    [("addition", 49, Problem("6+6=", "12")), ("addition9", 100, Problem("9+9=", "18"))],
)
def test_addition_problems_and_rewards(name, n, top):
    task = get_task(name)
    problems = task.all_problems()
    assert len(problems) == n
    assert Problem("3+5=", "8") in problems
    assert top in problems
    assert set(task.sample(0, 2000)) == set(problems)
    for p in problems:
        a, b = p.prompt.rstrip("=").split("+")
        assert int(p.answer) == int(a) + int(b)
        assert len(p.answer) <= task.max_answer_chars
        assert set(p.prompt + p.answer) <= set(task.alphabet)
        assert task.score(p.answer, p.answer) == 1.0


def test_reverse_problems_and_rewards():
    task = get_task("reverse")
    for p in task.sample(0, 200):
        word = p.prompt.rstrip("=")
        assert 3 <= len(word) <= 5
        assert p.answer == word[::-1]
        assert set(p.prompt + p.answer) <= set(task.alphabet)
    assert len(task.all_problems()) == 8**3 + 8**4 + 8**5


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("8", "8", 1.0),
        (" 8\n", "8", 1.0),
        ("8 ", " 8", 1.0),
        ("08", "8", 0.0),
        ("9", "8", 0.0),
        ("", "8", 0.0),
        ("88", "8", 0.0),
        ("8+1", "8", 0.0),
        ("cba", "cba", 1.0),
        ("abc", "cba", 0.0),
    ],
)
def test_exact_match(completion, answer, expected):
    assert exact_match(completion, answer) == expected
    for task in TASKS.values():
        assert task.score(completion, answer) == expected


def test_task_reward_entry_point():
    for name in TASKS:
        fn = task_reward(name)
        fn2 = pickle.loads(pickle.dumps(fn))  # a reward actor may receive it through Ray
        p = get_task(name).sample(1, 1)[0]
        assert fn(p.prompt, p.answer, p.answer) == 1.0
        assert fn2(p.prompt, p.answer + "x", p.answer) == 0.0
        r = fn(p.prompt, "", p.answer)
        assert 0.0 <= r <= 1.0
    with pytest.raises(KeyError):
        task_reward("nope")


def test_sampling_is_deterministic_given_seed():
    for task in TASKS.values():
        a = task.sample(random.Random(7), 50)
        b = task.sample(random.Random(7), 50)
        c = task.sample(7, 50)  # an int seed works too
        d = task.sample(random.Random(8), 50)
        assert a == b == c
        assert a != d


def test_get_task_error_lists_names():
    assert get_task(DEFAULT_TASK).name == DEFAULT_TASK
    with pytest.raises(KeyError) as err:
        get_task("multiplication")
    msg = str(err.value)
    assert "multiplication" in msg
    for name in TASKS:
        assert name in msg


@pytest.mark.parametrize("name", sorted(TASKS))
def test_tokenizer_round_trip_every_char(name):
    from rlhf.models.tiny import build_tokenizer

    task = get_task(name)
    tok = build_tokenizer(task.alphabet)
    ids_seen = set()
    for ch in task.alphabet:
        ids = tok.encode(ch, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] != tok.unk_token_id
        ids_seen.add(ids[0])
        assert tok.decode(ids) == ch
    assert len(ids_seen) == len(set(task.alphabet))
    for p in task.sample(0, 50):
        s = p.prompt + p.answer
        ids = tok.encode(s)
        assert len(ids) == len(s)  # one token per char, nothing added
        assert tok.decode(ids) == s
        assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == s
    assert tok.eos_token_id is not None and tok.pad_token_id is not None
    assert tok.eos_token_id != tok.pad_token_id
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4


@pytest.mark.parametrize("name", sorted(TASKS))
def test_tokenizer_ids_of_space_free_alphabets_unchanged(name):
    """The vocabulary's byte-level names change only space and control characters, none of
    which the built-in tasks use: their ids (and so the learned results in README) stay as the
    plain char-level vocabulary gave them: specials 0..3, then the alphabet in order."""
    from rlhf.models.tiny import build_tokenizer

    alphabet = get_task(name).alphabet
    chars = list(dict.fromkeys(alphabet))
    vocab = build_tokenizer(alphabet).get_vocab()
    assert all(vocab[c] == 4 + i for i, c in enumerate(chars))
    assert len(vocab) == 4 + len(chars)


def test_tokenizer_rejects_non_ascii_alphabet():
    from rlhf.models.tiny import build_tokenizer

    with pytest.raises(ValueError, match="ASCII"):
        build_tokenizer("abé")
