"""cluster.yaml checked offline by Ray's own autoscaler validation, and against the paper preset's GPU asks."""
import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from ecr_ray.config import load_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


def test_cluster_yaml_passes_rays_validation_and_fits_the_paper_preset():
    raw = yaml.safe_load(CLUSTER.read_text())
    config = prepare_config(copy.deepcopy(raw))  # what `ray up` does before launching anything
    validate_config(config)
    types = config["available_node_types"]
    workers = {n: t for n, t in types.items() if n != config["head_node_type"]}
    gpu = {n: t for n, t in workers.items() if t["resources"].get("GPU")}
    assert gpu and any(t["resources"]["CPU"] >= 8 and not t["resources"].get("GPU") for t in workers.values())  # Ray Data nodes
    assert all(0 <= t["min_workers"] <= t["max_workers"] for t in workers.values()) and config["idle_timeout_minutes"] > 0
    assert sum(t["max_workers"] for t in workers.values()) >= config["max_workers"] > 0

    paper = load_config("paper")
    asks = {name: (t.num_workers, t.cpus_per_worker, 1.0 if t.use_gpu else 0.0)  # Ray Train: one GPU per worker
            for name, t in {"emotion.classifier": paper.emotion.classifier.train, "rec": paper.rec.train,
                            "gen.generator": paper.gen.generator.train}.items()}
    asks |= {name: (p.actors, p.cpus, p.gpus) for name, p in {"emotion.infer_pool": paper.emotion.infer_pool,
                                                             "gen.review_pool": paper.gen.review_pool,
                                                             "gen.respond_pool": paper.gen.respond_pool}.items()}
    for name, (count, cpus, gpus) in asks.items():
        assert gpus > 0, name
        fits = [n for n, t in gpu.items() if t["resources"]["CPU"] >= cpus]
        assert sum(gpu[n]["max_workers"] * gpu[n]["resources"]["GPU"] for n in fits) >= count * gpus, name
    assert any("pip install" in c and "~/ecr-ray" in c for c in config["setup_commands"])

    typo = copy.deepcopy(raw)
    typo["available_node_types"]["cpu_worker"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(typo))
