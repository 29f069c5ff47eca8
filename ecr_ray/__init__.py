"""ecr-ray: the ECR empathetic conversational recommender as a Ray pipeline.

    cfg = load_config("cpu", ["rec.train.epochs=5"])
    run(cfg, "runs/cpu")                       # every stage, skipping those up to date
    evaluate(load_config("cpu", ["data.split_files.test=/data/test_data.jsonl"]), "runs/cpu")
    serve.run(build_app({"run_dir": "runs/cpu"}))
"""
from ecr_ray.config import Config, load_config
from ecr_ray.pipeline import evaluate, run

__all__ = ["Config", "build_app", "evaluate", "load_config", "run"]
__version__ = "0.1.0"


def build_app(args: dict):
    """The Ray Serve chat app of a trained run (`serve run serve/config.yaml` calls the same builder)."""
    from ecr_ray.serving.app import build_app as build

    return build(args)
