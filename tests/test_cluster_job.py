"""`ray job submit` of jobs/train.py against a real `ray start --head` cluster on loopback."""
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

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def head_node():
    """A head node with its own ports and temp dir; stopped by terminating its process tree
    (`ray stop` would also stop the tests' session cluster)."""
    gcs, dashboard, client, agent, metrics = _free_ports(5)
    temp_dir = tempfile.mkdtemp(prefix="ecr-head-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    log = open(Path(temp_dir) / "head.log", "w")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}", "--num-cpus=2",
         "--object-store-memory=300000000", "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except OSError:
            assert head.poll() is None and time.time() < deadline, (Path(temp_dir) / "head.log").read_text()[-3000:]
            time.sleep(1)
    try:
        yield address, env
    finally:
        tree = psutil.Process(head.pid).children(recursive=True) + [psutil.Process(head.pid)]
        for proc in tree:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        for proc in psutil.wait_procs(tree, timeout=15)[1]:
            proc.kill()
        log.close()


@pytest.mark.cluster
def test_ray_job_submit_runs_the_pipeline(head_node, tmp_path, data_root):
    address, env = head_node
    run_dir = tmp_path / "run"
    runtime_env = json.dumps({"env_vars": {"ECR_DATA_DIR": str(data_root)}})
    result = subprocess.run(
        [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO), "--runtime-env-json", runtime_env,
         "--", sys.executable, "jobs/train.py", "--config", "configs/tiny.yaml",
         "--run-dir", str(run_dir), "--set", "data.max_dialogues=60", "--stages", "prepare,linking-report"],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "[prepare-pool] done" in result.stdout and "succeeded" in result.stdout + result.stderr
    summary = json.loads((run_dir / "reports/summary.json").read_text())
    assert sum(summary["prepare-pool"]["dialogues"].values()) == 60
    turns = pq.read_table(run_dir / "prepared/pool/rec_turns")
    assert turns.num_rows == summary["prepare-pool"]["rec_turns"] > 60
    assert json.loads((run_dir / "reports/linking.json").read_text())["vs_unicrs"]["all"]["f1"] > 0.8
    assert (run_dir / "_stages/prepare-pool.json").exists()
