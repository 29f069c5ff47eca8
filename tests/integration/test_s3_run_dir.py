"""A run directory on object storage (`--run-dir s3://bucket/run`): every stage reads and writes through
pyarrow's S3 filesystem, Ray Data's writes and Ray Train's checkpoints included, and a second run resumes
from the manifests there. The endpoint is moto's S3 server on loopback, reached over HTTP by the same
AWS client code that talks to AWS (`AWS_ENDPOINT_URL`)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST_EMOTION

BUCKET = "ecr-runs"
ECR_RAY = str(Path(sys.executable).parent / "ecr-ray")


@pytest.fixture
def s3_env(monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield env
    server.stop()


def test_a_run_directory_on_s3(s3_env, data_root, tmp_path):
    from ecr_ray.rundir import RunDir

    uri = f"s3://{BUCKET}/run"
    command = [ECR_RAY, "run", "--config", "tiny", "--run-dir", uri, "--stages", "prepare,linking-report,emotion",
               *[a for s in ["data.max_dialogues=60", *FAST_EMOTION] for a in ("--set", s)]]
    env = {**os.environ, **s3_env, "ECR_DATA_DIR": str(data_root)}
    first = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert first.returncode == 0, first.stdout[-8000:] + first.stderr[-4000:]
    assert f"summary: {uri}/reports/summary.json" in first.stdout
    assert not any(tmp_path.iterdir())  # nothing landed in the working directory (no local "s3:" folder)

    run = RunDir(uri)
    summary = run.read_json("reports/summary.json")
    users = run.read_table("prepared/pool/user_utterances", columns=["utterance_id"]).column("utterance_id").to_pylist()
    inferred = run.read_table("emotion/utterances/pool", columns=["utterance_id", "probs"]).to_pydict()
    assert sorted(inferred["utterance_id"]) == sorted(users) and len(users) == summary["emotion-infer-pool"]["utterances"] > 100
    assert all(len(p) == 9 for p in inferred["probs"])
    assert run.exists("models/emotion_classifier/head.safetensors") and run.exists("models/teacher/head.safetensors")
    checkpoints = [i.path for i in run.fs.get_file_info(_selector(run.path("train"))) if i.base_name.startswith("checkpoint_")]
    assert checkpoints  # Ray Train kept its checkpoints in the bucket

    second = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert second.returncode == 0, second.stdout[-8000:] + second.stderr[-4000:]
    stages = [s for s in summary if s.startswith(("prepare", "linking", "emotion"))]
    assert len(stages) == 6 and all(f"[{s}] up to date" in second.stdout for s in stages)  # resumed from the manifests on S3

    report = run.read_text("reports/run.md")  # per-stage wall times (kept from the run that ran them) and the figures
    assert all(f"| {s} | {summary[s]['seconds']:.0f} s | reused (up to date) |" in report for s in stages if summary[s]["seconds"] < 120)
    ours, _, papers = report.partition("The paper's figures")  # the paper's figures in a table of their own, never beside ours
    assert f"| emotion classifier Recall@2 | held-out annotations | {summary['emotion-classifier']['recall@2']:.4f} |" in ours
    assert "| emotion classifier Recall@2 | 0.8775 |" in papers and "0.8775" not in ours
    assert "Machine: " in report and "torch CPU capability" in report


def _selector(path: str):
    import pyarrow.fs as pafs

    return pafs.FileSelector(path, recursive=True)
