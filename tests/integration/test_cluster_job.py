"""`ray job submit` of jobs/train.py against a real two-node cluster on loopback: a head from
`ray start --head` and a second node joined with `ray start --address`, each with its own CPUs; the
second node declares a GPU (none is there: the classifier actors that ask for one land on it and,
finding no CUDA device, run on its CPU)."""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


NODE_CPUS = 3  # per node; a linking actor or a training worker of 1.6 CPUs fits once per node: they spread


def _stop(proc: subprocess.Popen) -> None:
    """Terminate a `ray start --block` process tree (`ray stop` would also stop the tests' session cluster)."""
    if proc.poll() is not None:
        return
    tree = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    for p in tree:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    for p in psutil.wait_procs(tree, timeout=15)[1]:
        p.kill()


@pytest.fixture
def two_nodes():
    """A head and a second node, each with its own ports; the head's temp dir is shared by both."""
    gcs, dashboard, client, *ports = _free_ports(15)
    temp_dir = tempfile.mkdtemp(prefix="ecr-head-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    common = ["--block", f"--num-cpus={NODE_CPUS}", "--disable-usage-stats"]
    node_ports = lambda p: [f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}", f"--metrics-export-port={p[2]}",  # noqa: E731
                            f"--dashboard-agent-listen-port={p[3]}", f"--dashboard-agent-grpc-port={p[4]}", f"--runtime-env-agent-port={p[5]}"]
    logs = [open(Path(temp_dir) / f"{name}.log", "w") for name in ("head", "node2")]
    nodes = [subprocess.Popen(
        [RAY, "start", "--head", "--node-ip-address=127.0.0.1", *common, f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--ray-client-server-port={client}", *node_ports(ports[:6]), "--object-store-memory=300000000", "--include-dashboard=true",
         f"--temp-dir={temp_dir}"], stdout=logs[0], stderr=subprocess.STDOUT, env=env)]
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait(lambda: urllib.request.urlopen(f"{address}/api/version", timeout=2), nodes[0], temp_dir)
        nodes.append(subprocess.Popen(
            [RAY, "start", f"--address=[::ffff:127.0.0.1]:{gcs}", *common, "--num-gpus=1", *node_ports(ports[6:12]), "--object-store-memory=300000000",
             "--min-worker-port=20000", "--max-worker-port=20999",
             # its own session folder: nodes sharing one would delete the job's unpacked working dir under each other
             f"--temp-dir={tempfile.mkdtemp(prefix='ecr-node2-', dir='/tmp')}"], stdout=logs[1], stderr=subprocess.STDOUT,
            # "0" (loopback only) refuses to join a head; with "1" Ray rewrites 127.0.0.1 to the box's external
            # address, but not the IPv4-mapped form: the node joins, and takes its address, on loopback
            env={**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}))
        _wait(lambda: _two_alive(address), nodes[1], temp_dir)
        yield address, env
    finally:
        for node in reversed(nodes):
            _stop(node)
        for log in logs:
            log.close()


def _two_alive(address: str) -> None:
    from ray.util.state import list_nodes

    assert sum(n.state == "ALIVE" for n in list_nodes(address=address)) == 2


def _wait(probe, proc, temp_dir, seconds: int = 90) -> None:
    deadline = time.time() + seconds
    while True:
        try:
            probe()
            return
        except Exception:
            logs = "".join(p.read_text()[-2000:] for p in Path(temp_dir).glob("*.log"))
            assert proc.poll() is None and time.time() < deadline, logs
            time.sleep(1)


@pytest.mark.cluster
def test_ray_job_submit_runs_on_both_nodes(two_nodes, tmp_path, data_root):
    from ray.util.state import list_actors, list_nodes

    address, env = two_nodes
    run_dir = tmp_path / "run"
    # a fixed-size Ray Data pool starts on its first ready actor unless told to wait for all: on a small job the
    # actor on node 2 (slower: it unpacks the working dir) could be cancelled unplaced, the head's doing it all
    runtime_env = json.dumps({"env_vars": {"ECR_DATA_DIR": str(data_root), "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "300"}})
    spread = ["data.link_pool.actors=2", "data.link_pool.cpus=1.6", "data.link_pool.batch_size=16", "emotion.teacher.train.num_workers=2",
              "emotion.teacher.train.cpus_per_worker=1.6", "emotion.teacher.max_examples=200", "emotion.eval_examples=100",
              "emotion.sample_size=60", "emotion.classifier.train.epochs=1", "emotion.infer_pool.actors=2", "emotion.infer_pool.gpus=0.5"]
    result = subprocess.run(
        [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO), "--runtime-env-json", runtime_env,
         "--", sys.executable, "jobs/train.py", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir),
         "--set", "data.max_dialogues=60", *[a for s in spread for a in ("--set", s)], "--stages", "prepare,linking-report,emotion"],
        capture_output=True, text=True, env=env, timeout=900, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-2000:]
    assert "[prepare-pool] done" in result.stdout and "[emotion-infer-pool] done" in result.stdout
    summary = json.loads((run_dir / "reports/summary.json").read_text())
    assert sum(summary["prepare-pool"]["dialogues"].values()) == 60
    turns = pq.read_table(run_dir / "prepared/pool/rec_turns")
    assert turns.num_rows == summary["prepare-pool"]["rec_turns"] > 60
    assert json.loads((run_dir / "reports/linking.json").read_text())["vs_unicrs"]["all"]["f1"] > 0.8
    assert (run_dir / "_stages/prepare-pool.json").exists() and (run_dir / "models/teacher").exists()
    users = pq.read_table(run_dir / "prepared/pool/user_utterances", columns=["utterance_id"]).column("utterance_id").to_pylist()
    inferred = pq.read_table(run_dir / "emotion/utterances/pool", columns=["utterance_id"]).column("utterance_id").to_pylist()
    assert sorted(inferred) == sorted(users)

    nodes = {n.node_id: n for n in list_nodes(address=address, detail=True)}
    gpu_node = {i for i, n in nodes.items() if n.resources_total.get("GPU")}
    actors = list_actors(address=address, limit=10_000, detail=True)
    placed = lambda name: {a.node_id for a in actors if name in a.class_name}  # noqa: E731
    assert len(nodes) == 2 and placed("DialogueLinker") == set(nodes), [(a.class_name, a.node_id) for a in actors]  # Ray Data actors
    assert placed("RayTrainWorker") == set(nodes)  # the teacher's two DDP workers, one per node
    assert len(gpu_node) == 1 and placed("EmotionPredictor") == gpu_node  # emotion.infer_pool.gpus: only where a GPU is
