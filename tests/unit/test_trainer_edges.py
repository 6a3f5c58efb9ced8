"""Trainer.fit's edges with fake roles (no Ray cluster): the logger — W&B included, offline and
read back from its files — is finished with the exit code on every way out (success, failure,
signal), and every file the run appends to is truncated to the step a run starts from."""

import os
import signal

import pytest
import ray

from rlhf import jsonl
from rlhf.config import AlgoConfig, LoggerConfig, TrainerConfig, WandbConfig
from rlhf.faults import RunFailed, Stopped, WorkerLost
from rlhf.ledger import Ledger
from rlhf.metrics import RunLogger
from rlhf.trainer import Trainer
from rlhf.wandb_offline import _wandb_records


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch, tmp_path):
    """The fakes return plain values where the real roles return object refs."""
    monkeypatch.setattr(ray, "get", lambda refs, **_: refs)
    monkeypatch.setattr(ray, "wait", lambda refs, **_: (refs, []))
    for k, v in {
        "WANDB_SILENT": "true",
        "WANDB_MODE": "offline",
        "WANDB_BASE_URL": "http://127.0.0.1:9",
        "NETRC": str(tmp_path / "no_netrc"),
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


class Learners:
    class cfg:
        sync_bucket_mb = 1

    actors: list = []

    def sync_address(self):
        return "127.0.0.1", 0

    def weight_meta(self):
        return []

    def init_weight_sync(self, *a):
        return []

    def broadcast_weights(self):
        return []

    def save(self, folder, tag):
        os.makedirs(folder)
        return []

    def load(self, folder, tag):
        assert os.path.isdir(folder)
        return []


class Rollout:
    sync_ranks, workers, exports_hf = 1, [], False

    def init_weight_sync(self, *a):
        return []

    def receive_weights(self, version):
        return []

    def sample_rows(self, samples):
        return [{"response": s} for s in samples]

    def state(self):
        return {}

    def load_state(self, state):
        pass


class Pipeline:
    """One prompt per step, closed in the real ledger (ledger.jsonl) as trained."""

    def __init__(self, run_dir):
        self.ledger = Ledger(run_dir / jsonl.LEDGER)

    def next_batch(self, step, version):
        self.ledger.issue(step, step)
        self.ledger.close(step, "trained", step, version)
        return [f"sample of step {step}"], {}

    def drain(self):
        pass

    def state(self):
        return {}

    def load_state(self, state, step):
        self.ledger.load_state([], step)


class Evaluator:
    def due(self, step):
        return True

    def run(self, workers, rewards, step):
        return {"eval/accuracy": step / 10}


def make_trainer(run_dir, *, total=5, save_every=0, at_step=None, wandb="offline"):
    """A Trainer on fakes; `at_step(step)` runs inside each step (to fail or to signal)."""
    logger = RunLogger(
        LoggerConfig(wandb=WandbConfig(mode=wandb), console_every=0, samples_every=1),
        run_dir,
        config={},
        total_steps=total,
        name="edges",
        group=None,
        tags=[],
        primary_metric="reward/mean",
    )
    t = Trainer(
        TrainerConfig(
            total_steps=total, save_every=save_every, save_every_min=0, report=False, keep_last=5
        ),
        AlgoConfig(),
        pipeline=Pipeline(run_dir),
        rollout=Rollout(),
        learners=Learners(),
        logger=logger,
        run_dir=run_dir,
        evaluator=Evaluator(),
    )

    def step():
        step = t.step_index + 1
        samples, _ = t.pipeline.next_batch(step, t.version)
        if at_step is not None:
            at_step(step)
        return {"reward/mean": step / 10, "timing/step_s": 0.01}, samples

    t.step = step
    return t


def wandb_exit_code(run_dir):
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    (code,) = [
        r.exit.exit_code for r in _wandb_records(log) if r.WhichOneof("record_type") == "exit"
    ]
    return code


def steps_in(run_dir):
    return {name: [r["step"] for r in jsonl.read(run_dir / name)] for name in jsonl.RUN_FILES}


def test_success_finishes_with_exit_code_0(tmp_path, capsys):
    summary = make_trainer(tmp_path, total=3).fit()
    assert summary["steps"] == 3 and summary["final"] == pytest.approx(0.3)
    assert wandb_exit_code(tmp_path) == 0
    assert "done: 3 steps" in capsys.readouterr().out
    assert steps_in(tmp_path) == {
        "metrics.jsonl": [1, 2, 3],
        "samples.jsonl": [1, 2, 3],
        "ledger.jsonl": [1, 2, 3],
        "eval.jsonl": [0, 1, 2, 3],
    }


def test_a_failure_finishes_the_logger_with_exit_code_1(tmp_path, capsys):
    def fail(step):
        if step == 3:
            raise RunFailed("the reward service is gone")

    t = make_trainer(tmp_path, at_step=fail)
    with pytest.raises(RunFailed, match="reward service"):
        t.fit()
    assert wandb_exit_code(tmp_path) == 1
    assert "ended with exit code 1: 2 steps" in capsys.readouterr().out
    assert steps_in(tmp_path)["metrics.jsonl"] == [1, 2]


def test_an_error_while_finishing_does_not_hide_the_failure(tmp_path, monkeypatch):
    t = make_trainer(tmp_path, wandb="disabled", at_step=lambda s: 1 / 0)

    def broken_finish(**kw):
        raise OSError("disk full")

    monkeypatch.setattr(t.logger, "finish", broken_finish)
    with pytest.raises(ZeroDivisionError):
        t.fit()


def test_a_signal_saves_the_step_and_finishes_with_128_plus_its_number(tmp_path):
    def preempt(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's notice, during step 2

    t = make_trainer(tmp_path, at_step=preempt)
    # What was there before (SIG_DFL alone; Ray's handler once an earlier test ran ray.init).
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stopped:
        t.fit()
    assert stopped.value.signum == signal.SIGTERM
    assert wandb_exit_code(tmp_path) == 128 + signal.SIGTERM
    assert t.checkpoints.latest().name == "step-000002"
    assert steps_in(tmp_path)["metrics.jsonl"] == [1, 2]
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are restored


def test_a_second_signal_stops_at_once_with_130(tmp_path):
    def impatient(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    t = make_trainer(tmp_path, at_step=impatient)
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert wandb_exit_code(tmp_path) == 130
    assert t.checkpoints.latest() is None


def test_resume_truncates_every_appended_file_to_the_checkpoint(tmp_path):
    def crash(step):
        if step == 4:
            with open(tmp_path / jsonl.METRICS, "a") as f:
                f.write('{"step": 4, "rew')  # killed mid-row
            raise RunFailed("killed")

    first = make_trainer(tmp_path, total=5, save_every=2, at_step=crash, wandb="disabled")
    with pytest.raises(RunFailed):
        first.fit()
    assert steps_in(tmp_path)["metrics.jsonl"] == [1, 2, 3]  # 3 is past the checkpoint
    assert steps_in(tmp_path)["ledger.jsonl"] == [1, 2, 3, 4]
    second = make_trainer(tmp_path, total=5, save_every=2, wandb="disabled")
    second.fit(resume_from=first.checkpoints.latest())
    assert steps_in(tmp_path) == {
        "metrics.jsonl": [1, 2, 3, 4, 5],
        "samples.jsonl": [1, 2, 3, 4, 5],
        "ledger.jsonl": [1, 2, 3, 4, 5],
        "eval.jsonl": [0, 1, 2, 3, 4, 5],
    }
    rows = jsonl.read(tmp_path / jsonl.METRICS)
    assert [r["reward/mean"] for r in rows] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def test_a_fresh_start_in_a_used_folder_keeps_none_of_the_earlier_rows(tmp_path):
    def crash(step):
        if step == 3:
            raise RunFailed("killed before the first checkpoint")

    with pytest.raises(RunFailed):
        make_trainer(tmp_path, at_step=crash, wandb="disabled").fit()
    make_trainer(tmp_path, total=2, wandb="disabled").fit()  # no checkpoint: from the start
    assert steps_in(tmp_path) == {
        "metrics.jsonl": [1, 2],
        "samples.jsonl": [1, 2],
        "ledger.jsonl": [1, 2],
        "eval.jsonl": [0, 1, 2],
    }


def test_an_engine_lost_while_draining_for_a_checkpoint_is_recovered(tmp_path):
    """A rollout worker that dies while a checkpoint drains the pipeline: the trainer restarts
    it and re-issues what it held (as in a step), then saves; the run goes on."""

    class Worker:
        class node_id:
            @staticmethod
            def remote():
                return "node"

    class LosingPipeline(Pipeline):
        def __init__(self, run_dir):
            super().__init__(run_dir)
            self.drains, self.reissued = 0, []

        def drain(self):
            self.drains += 1
            if self.drains == 1:
                raise WorkerLost(0, "ActorDiedError: killed")

        def reissue(self, worker):
            self.reissued.append(worker)
            return 3

    t = make_trainer(tmp_path, total=3, save_every=2)
    t.pipeline = LosingPipeline(tmp_path)
    t.rollout.workers = [Worker()]
    summary = t.fit()
    assert summary["steps"] == 3
    assert t.restarts == 1 and t.pipeline.reissued == [0] and t.pipeline.drains >= 2
    assert (tmp_path / "checkpoints" / "step-000002" / "trainer_state.json").exists()
