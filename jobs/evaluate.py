"""Entry point for `ray job submit --working-dir . -- python jobs/evaluate.py --config configs/cpu.yaml
--run-dir DIR --split-file test=/abs/path/test_data.jsonl`.

Evaluates a trained run on raw ReDial files (`ecr-ray evaluate`): the recommender's metrics and, once
a generator is trained, its responses; reports/eval-NAME.json and reports/gen-eval-NAME.json.
"""
import sys
from pathlib import Path

try:
    import ecr_ray  # noqa: F401 - the installed package, when the cluster has it
except ImportError:  # a bare cluster: use the uploaded working directory
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ecr_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
