"""Placement across two Ray nodes: the learner ranks fill one node, so the rollout engine and
reward actor land on the other; the loop still runs and the weight sync crosses nodes."""

import json

import pytest
from cli_run import train

pytestmark = pytest.mark.integration


def test_rollout_and_learner_on_different_nodes(tmp_path, tiny_model_path):
    from ray.cluster_utils import Cluster

    # Both nodes on this machine. (Not pinned to 127.0.0.1: a driver in another process finds
    # its local raylet by the machine's address.)
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        run_dir = tmp_path / "run"
        proc = train(
            run_dir,
            "+experiment=grpo",
            "trainer.total_steps=3",
            f"ray.address={cluster.address}",
            "ray.num_cpus=null",
            "placement.strategy=STRICT_PACK",
            "logger.wandb.mode=disabled",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        nodes = json.loads((run_dir / "placement.json").read_text())
        assert len(set(nodes["learner"])) == 1
        assert set(nodes["rollout"]).isdisjoint(nodes["learner"]), nodes
        steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
        assert steps == [1, 2, 3]
    finally:
        cluster.shutdown()
