"""prepare-shards on a real multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``:
a head without CPUs plus worker nodes), joined with ``--address`` as on a real cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.pipelines.test_prepare import digest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CLI = [sys.executable, "-m", "lossyvision.cli", "prepare-shards"]
JOB = ["--dataset", "samples", "--crop", "resize400-center384", "--codec", "jpeg", "--quality", "10", "--codec", "bpg", "--quality", "41,46", "--quiet"]


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray.cluster_utils import Cluster

    import socket

    # A free port for the Ray Client server, but none of the fixed ports Ray's own components take
    # (the dashboard agent's 52365 once came up here, and Ray refused to start: "used by other components").
    ray_defaults = {6379, 8265, 10001, 52365, 52366, 8076, 8077, 44217, 44227}
    port = None
    while port is None or port in ray_defaults:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, "ray_client_server_port": port})
    c.client_port = port
    nodes = [c.add_node(num_cpus=1), c.add_node(num_cpus=1)]
    c.wait_for_nodes()
    yield c, nodes
    c.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same job on one machine, in-process: what the cluster must write, byte for byte."""
    out = str(tmp_path_factory.mktemp("ref"))
    subprocess.run(CLI + JOB + ["--shard-size", "1", "--out", out, "--executor", "local"], check=True, capture_output=True)
    return digest(out)


def test_cluster_run_is_byte_identical_to_a_local_run(cluster, reference, tmp_path):
    c, _ = cluster
    out = str(tmp_path / "out")
    p = subprocess.run(CLI + JOB + ["--shard-size", "1", "--out", out, "--address", c.address], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert digest(out) == reference


def test_ray_client_address_works_too(cluster, reference, tmp_path):
    """`--address ray://HEAD:10001`: the driver runs through Ray Client, the work on the cluster."""
    c, _ = cluster
    out = str(tmp_path / "out")
    p = subprocess.run(CLI + JOB + ["--shard-size", "1", "--out", out, "--address", f"ray://127.0.0.1:{c.client_port}"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert digest(out) == reference


def test_a_worker_node_lost_mid_job_changes_nothing(cluster, reference, tmp_path):
    c, nodes = cluster
    spare = c.add_node(num_cpus=1)  # three workers; one of them dies mid-job
    c.wait_for_nodes()
    out = str(tmp_path / "out")
    proc = subprocess.Popen(CLI + JOB + ["--shard-size", "1", "--out", out, "--address", c.address, "-v"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    man = os.path.join(out, "samples", "all", "bpg-qp46", "_manifest.json")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(man) and sum(1 for e in json.load(open(man))["shards"] if e) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before a node could be removed"
    c.remove_node(spare, allow_graceful=False)  # as if the machine lost power: its raylet and workers are killed
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    m = json.load(open(man))
    assert m["complete"] and m["num_samples"] == 18
    assert digest(out) == reference
    assert not [f for _, _, fs in os.walk(out) for f in fs if ".tmp-" in f]
