"""Built-in synthetic tasks with rule-based rewards.

A task is a prompt format, a character alphabet (everything a prompt or an answer may contain,
used to build the char-level tokenizer of the tiny model), a problem generator and a reward.

Rewards are exact match after stripping surrounding whitespace: 1.0 or 0.0. No partial credit:
the learnability study (``scripts/learnability.py``) showed it is not needed.

Built-ins:
- ``addition`` (the default): ``"a+b="`` -> ``str(a + b)`` for ``a, b`` in 0..6 (49 problems,
  answers 0..12, so some answers take two tokens). ``scripts/learnability.py`` picked this
  range: with the default tiny model, GRPO raises the reward by about 0.6 in 250 steps for every
  seed tried.
- ``addition9``: the same for ``a, b`` in 0..9 (100 problems, answers 0..18). Learnable but slower:
  a rise of 0.29-0.53 in 250 steps over 8 seeds, so it is not the default.
- ``reverse``: ``"abc="`` -> ``"cba"`` for 3-5 letters from ``a..h`` (37,376 problems).
- ``fractions``: ``"a/b="`` -> ``\\boxed{a/b}`` for ``a`` in 0..9, ``b`` in 1, 2, 4 (30 prompts),
  written as a reduced fraction or a decimal (``3/2`` or ``1.5``, both in the warm-up data). The
  completion must be exactly one ``\\boxed{}`` whose content math-verify finds equal to the
  answer (rlhf/reward/math.py), so any equivalent form (``6/4``) counts. GRPO raises its reward
  by about 0.4 in 80 steps (tests/integration/test_rewards_runs.py).
- ``spell``: ``"21="`` -> ``"twenty-one"`` for 0..29 (30 problems). The answers are 3 to 12
  characters long, so response lengths vary four-fold between prompts: the task the rollout
  pipeline's overlap and dynamic sampling are measured on (``scripts/bench_pipeline.py``).

Agent tasks (``Task.env`` names the environment that plays them, rlhf/envs/; their ``reward`` is
the environment's check of the final answer, exact match as above, and the environment's turn
rewards are what a run trains on):
- ``agent_calculator`` (env ``calculator``): ``"47+85="`` for ``a, b`` in 10..99; the model must
  call the ``add`` tool (``add(47,85)``), read ``[132]`` and answer ``132``. The tiny model
  cannot add two-digit numbers by itself, so success needs the tool.
- ``agent_guess`` (env ``guess_number``): the prompt ``"0-9?"``, the answer a secret digit; the
  model guesses, the environment replies ``higher`` / ``lower``, 4 guesses at most.
The tiny model's format for them (rlhf/models/tiny.py) renders a tool result as ``[result]``,
so ``[`` and ``]`` are in their alphabets.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str
    # Extra columns handed to the reward with the answer (a reasoning-gym entry's index).
    fields: dict = field(default_factory=dict, compare=False, hash=False)


def exact_match(completion: str, answer: str) -> float:
    """1.0 when the completion equals the answer after stripping whitespace, else 0.0."""
    return 1.0 if completion.strip() == answer.strip() else 0.0


@dataclass(frozen=True)
class Task:
    name: str
    alphabet: str
    make_problem: Callable[[random.Random], Problem]
    reward: Callable[[str, str], float]
    max_answer_chars: int
    # Enumerates every problem when the problem space is finite (and small enough to list).
    enumerate_problems: Callable[[], Iterable[Problem]] | None = field(default=None, repr=False)
    # The registered text environment (rlhf/envs) that plays an agent task; "" = single-turn.
    env: str = ""
    # A reward that needs the problem's fields too: (completion, answer, fields) -> float.
    reward_fields: Callable[[str, str, dict], float] | None = field(default=None, repr=False)
    # The reward is pure, fast Python that needs no signals (exact match): a reward actor may
    # call it in its own process, without a worker-process round trip (rlhf/reward/inprocess.py).
    # False keeps it in killable workers: math-verify (fractions) times itself out with
    # signal.alarm, which needs a process's main thread; third-party scorers may hang.
    reward_in_process: bool = False

    def sample(self, rng: random.Random | int, n: int) -> list[Problem]:
        """``n`` problems drawn with ``rng`` (a ``random.Random`` or an int seed)."""
        if not isinstance(rng, random.Random):
            rng = random.Random(rng)
        return [self.make_problem(rng) for _ in range(n)]

    @property
    def finite(self) -> bool:
        return self.enumerate_problems is not None

    def all_problems(self) -> list[Problem]:
        """Every problem, in a fixed order. Raises ValueError for an unbounded task."""
        if self.enumerate_problems is None:
            raise ValueError(f"task {self.name!r} has no finite problem list")
        return list(self.enumerate_problems())

    def score(self, completion: str, answer: str, fields: dict | None = None) -> float:
        if self.reward_fields is not None:
            return float(self.reward_fields(completion, answer, dict(fields or {})))
        return float(self.reward(completion, answer))


# --------------------------------------------------------------------------------------------
# addition


def _addition_problem(a: int, b: int) -> Problem:
    return Problem(prompt=f"{a}+{b}=", answer=str(a + b))


def _make_addition(max_operand: int, name: str = "addition") -> Task:
    def make(rng: random.Random) -> Problem:
        return _addition_problem(rng.randint(0, max_operand), rng.randint(0, max_operand))

    def enumerate_all() -> Iterable[Problem]:
        for a in range(max_operand + 1):
            for b in range(max_operand + 1):
                yield _addition_problem(a, b)

    return Task(
        name=name,
        alphabet="0123456789+=",
        make_problem=make,
        reward=exact_match,
        reward_in_process=True,
        max_answer_chars=len(str(2 * max_operand)),
        enumerate_problems=enumerate_all,
    )


# --------------------------------------------------------------------------------------------
# reverse

_REVERSE_LETTERS = "abcdefgh"
_REVERSE_MIN, _REVERSE_MAX = 3, 5


def _reverse_problem(word: str) -> Problem:
    return Problem(prompt=f"{word}=", answer=word[::-1])


def _make_reverse() -> Task:
    def make(rng: random.Random) -> Problem:
        n = rng.randint(_REVERSE_MIN, _REVERSE_MAX)
        return _reverse_problem("".join(rng.choice(_REVERSE_LETTERS) for _ in range(n)))

    def enumerate_all() -> Iterable[Problem]:
        for n in range(_REVERSE_MIN, _REVERSE_MAX + 1):
            for letters in itertools.product(_REVERSE_LETTERS, repeat=n):
                yield _reverse_problem("".join(letters))

    return Task(
        name="reverse",
        alphabet=_REVERSE_LETTERS + "=",
        make_problem=make,
        reward=exact_match,
        reward_in_process=True,
        max_answer_chars=_REVERSE_MAX,
        enumerate_problems=enumerate_all,
    )


# --------------------------------------------------------------------------------------------
# spell

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = {2: "twenty", 3: "thirty"}
SPELL_MAX = 29


def number_words(n: int) -> str:
    """English words for 0 <= n <= 39: 7 -> 'seven', 21 -> 'twenty-one'."""
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")


def _make_spell() -> Task:
    def problem(n: int) -> Problem:
        return Problem(prompt=f"{n}=", answer=number_words(n))

    return Task(
        name="spell",
        alphabet="0123456789=-abcdefghijklmnopqrstuvwxyz",
        make_problem=lambda rng: problem(rng.randint(0, SPELL_MAX)),
        reward=exact_match,
        reward_in_process=True,
        max_answer_chars=max(len(number_words(n)) for n in range(SPELL_MAX + 1)),
        enumerate_problems=lambda: (problem(n) for n in range(SPELL_MAX + 1)),
    )


# --------------------------------------------------------------------------------------------
# fractions (the math-checker task)

_FRACTION_DENOMINATORS = (1, 2, 4)


def _fraction_forms(a: int, b: int) -> list[str]:
    """Equivalent written forms of a/b: the reduced fraction and the decimal (one if integral)."""
    from fractions import Fraction

    v = Fraction(a, b)
    if v.denominator == 1:
        return [str(v.numerator)]
    return [f"{v.numerator}/{v.denominator}", f"{a / b:g}"]


def _whole_box(text: str) -> str | None:
    """The content when `text` is exactly one ``\\boxed{...}``, else None."""
    if not (text.startswith("\\boxed{") and text.endswith("}")):
        return None
    inner = text[len("\\boxed{") : -1]
    depth = 0
    for ch in inner:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return None
    return inner if depth == 0 and inner else None


def _boxed_math(completion: str, answer: str) -> float:
    """Exact match, or a completion that is exactly one \\boxed{} whose content math-verify finds
    equal to the answer's (``\\boxed{6/4}`` for ``\\boxed{1.5}``); anything else around the box
    scores 0, as in the other tasks."""
    completion, answer = completion.strip(), answer.strip()
    if completion == answer:
        return 1.0
    got, want = _whole_box(completion), _whole_box(answer)
    if got is None or want is None:
        return 0.0
    from rlhf.reward.math import equivalent  # math-verify loads only when scoring

    return float(equivalent(got, want))


def _make_fractions() -> Task:
    def make(rng: random.Random) -> Problem:
        a, b = rng.randint(0, 9), rng.choice(_FRACTION_DENOMINATORS)
        return Problem(prompt=f"{a}/{b}=", answer=f"\\boxed{{{rng.choice(_fraction_forms(a, b))}}}")

    def enumerate_all() -> Iterable[Problem]:
        for a in range(10):
            for b in _FRACTION_DENOMINATORS:
                for form in _fraction_forms(a, b):
                    yield Problem(prompt=f"{a}/{b}=", answer=f"\\boxed{{{form}}}")

    return Task(
        name="fractions",
        alphabet="0123456789/.=\\boxed{}",
        make_problem=make,
        reward=_boxed_math,
        max_answer_chars=len("\\boxed{2.25}"),
        enumerate_problems=enumerate_all,
    )


# --------------------------------------------------------------------------------------------
# agent tasks (played by an environment in rlhf/envs)

AGENT_CALC_LOW, AGENT_CALC_HIGH = 10, 99
GUESS_LOW, GUESS_HIGH = 0, 9


def _make_agent_calculator() -> Task:
    lo, hi = AGENT_CALC_LOW, AGENT_CALC_HIGH

    def make(rng: random.Random) -> Problem:
        return _addition_problem(rng.randint(lo, hi), rng.randint(lo, hi))

    return Task(
        name="agent_calculator",
        alphabet="0123456789+=" + "ad()," + "[]",  # prompt, the add(a,b) call, tool results
        make_problem=make,
        reward=exact_match,
        reward_in_process=True,
        max_answer_chars=len(str(2 * hi)),
        env="calculator",
    )


def _make_agent_guess() -> Task:
    def problem(secret: int) -> Problem:
        return Problem(prompt=f"{GUESS_LOW}-{GUESS_HIGH}?", answer=str(secret))

    return Task(
        name="agent_guess",
        alphabet="0123456789-?" + "higherlowinvalid" + "[]",
        make_problem=lambda rng: problem(rng.randint(GUESS_LOW, GUESS_HIGH)),
        reward=exact_match,
        reward_in_process=True,
        max_answer_chars=len(str(GUESS_HIGH)),
        enumerate_problems=lambda: (problem(n) for n in range(GUESS_LOW, GUESS_HIGH + 1)),
        env="guess_number",
    )


TASKS: dict[str, Task] = {
    "addition": _make_addition(6),
    "addition9": _make_addition(9, "addition9"),
    "reverse": _make_reverse(),
    "fractions": _make_fractions(),
    "spell": _make_spell(),
    "agent_calculator": _make_agent_calculator(),
    "agent_guess": _make_agent_guess(),
}

DEFAULT_TASK = "addition"


# --------------------------------------------------------------------------------------------
# reasoning-gym (data.task=reasoning_gym:<dataset name>; the reasoning_gym extra)

REASONING_GYM = "reasoning_gym"
# Entries are drawn by index from one procedural dataset of this size and seed; the run's data
# RNG picks the indices. An entry is a pure function of (seed, index), so the reward actor
# regenerates it from the index in the sample's fields and calls the dataset's score_answer.
RG_SIZE, RG_SEED = 1_000_000, 0
RG_INDEX = "rg_index"
# The char-level tiny model's alphabet for any reasoning-gym task: printable ASCII and newline
# (its prompts are English text; a character outside it becomes <unk>).
RG_ALPHABET = "".join(chr(c) for c in range(32, 127)) + "\n"


def _reasoning_gym():
    try:
        import reasoning_gym
    except ImportError as e:
        raise ImportError(
            f"data.task={REASONING_GYM}:<name> needs the reasoning-gym package "
            f"(pip install 'rlhf[reasoning_gym]'): {e}"
        ) from e
    return reasoning_gym


def reasoning_gym_names() -> list[str]:
    """reasoning-gym's dataset names (ImportError when it is not installed)."""
    _reasoning_gym()
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


@functools.cache
def _rg_dataset(name: str):
    return _reasoning_gym().create_dataset(name, seed=RG_SEED, size=RG_SIZE)


def _rg_problem(name: str, index: int) -> Problem:
    entry = _rg_dataset(name)[index]
    return Problem(prompt=entry["question"], answer=str(entry["answer"]), fields={RG_INDEX: index})


def _rg_score(name: str, completion: str, answer: str, fields: dict) -> float:
    """The dataset's own score_answer on the entry the prompt came from."""
    ds = _rg_dataset(name)
    if RG_INDEX in fields:
        entry = ds[int(fields[RG_INDEX])]
    else:  # a prompt from elsewhere (a file): score against its answer alone
        entry = {"question": "", "answer": answer, "metadata": {}}
    # Clipped to [0, 1]: some datasets' partial credit comes out as 1.0000000000000002.
    return min(1.0, max(0.0, float(ds.score_answer(completion.strip(), entry) or 0.0)))


@functools.cache
def reasoning_gym_task(name: str) -> Task:
    """The Task of reasoning-gym dataset ``name``: its generator as the problems, its
    ``score_answer`` as the reward. KeyError for an unknown name, ImportError when the package
    is not installed."""
    names = reasoning_gym_names()
    if name not in names:
        raise KeyError(
            f"unknown reasoning-gym dataset {name!r} in data.task={REASONING_GYM}:{name}; "
            f"it has: {', '.join(names)}"
        )
    _rg_dataset(name)  # a bad default config fails here, not in the first step
    return Task(
        name=f"{REASONING_GYM}:{name}",
        alphabet=RG_ALPHABET,
        make_problem=lambda rng: _rg_problem(name, rng.randrange(RG_SIZE)),
        reward=lambda completion, answer: _rg_score(name, completion, answer, {}),
        max_answer_chars=32,
        reward_fields=functools.partial(_rg_score, name),
    )


def get_task(name: str) -> Task:
    if name.startswith(REASONING_GYM + ":"):
        return reasoning_gym_task(name.split(":", 1)[1])
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


def check_task_name(name: str) -> None:
    """ValueError naming the choices when ``name`` is neither a built-in task nor an installed
    reasoning-gym dataset (for data.task's check; nothing heavy is imported for a built-in)."""
    if name in TASKS:
        return
    if not name.startswith(REASONING_GYM + ":"):
        raise ValueError(
            f"unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}, "
            f"or {REASONING_GYM}:<dataset name>"
        )
    try:
        reasoning_gym_task(name.split(":", 1)[1])
    except (KeyError, ImportError) as e:
        raise ValueError(str(e.args[0]) if e.args else str(e)) from None


def _task_reward(task_name: str, prompt: str, completion: str, answer: str, **fields) -> float:
    del prompt  # the built-in rewards only compare against the reference answer
    return get_task(task_name).score(completion, answer, fields)


def task_reward(task_name: str) -> Callable[[str, str, str], float]:
    """A picklable ``reward(prompt, completion, answer) -> float in [0, 1]`` for a reward actor."""
    get_task(task_name)  # fail early on an unknown name
    return functools.partial(_task_reward, task_name)
