"""Entry point for `ray job submit --working-dir . -- python jobs/train.py --config configs/tiny.yaml --run-dir DIR`.

Runs the same stage runner as `ecr-ray run`; inside a Ray job it joins the job's cluster
(RAY_ADDRESS), otherwise it starts a local Ray in-process.
"""
import sys
from pathlib import Path

try:
    import ecr_ray  # noqa: F401 - the installed package, when the cluster has it
except ImportError:  # a bare cluster: use the uploaded working directory
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ecr_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
