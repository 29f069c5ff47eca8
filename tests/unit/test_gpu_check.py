"""bench/gpu_check.sh: valid bash everywhere; on a machine without a CUDA GPU it says so and succeeds
(the GPU run itself is exercised with the device tool where a GPU is lent)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"


def test_gpu_check_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_gpu_check_skips_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the check would run for real")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "skipped, no CUDA GPU" in done.stdout
    assert not (tmp_path / "run").exists()  # nothing ran
