"""The classifier on Ray Train: DDP over two CPU workers, checkpoints, resume."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ecr_ray.config import ClassifierConfig, TrainKnobs, load_config
from ecr_ray.emotion.classifier import load_classifier
from ecr_ray.emotion.labels import multi_hot, read_goemotions
from ecr_ray.emotion.train import fit_classifier, train_loop

TINY_GPT2 = dict(backbone="gpt2", pretrained=None, gpt2_layers=1, gpt2_hidden=32, gpt2_heads=2, max_length=24)


def tiny_gpt2(**train) -> ClassifierConfig:
    return ClassifierConfig(**TINY_GPT2, train=TrainKnobs(batch_size=16, lr=1e-3, cpus_per_worker=0.5, **train))


@pytest.fixture(scope="module")
def goemotions(data_root):
    rows = read_goemotions(data_root / "emotion/goemotions/original", "train")
    return rows[:96], rows[96:128]


def test_ddp_two_workers_saves_a_loadable_model(ray_local, tmp_path, goemotions):
    from ecr_ray.rundir import RunDir

    cfg = load_config("tiny")
    ccfg = tiny_gpt2(epochs=2, num_workers=2)
    run_dir = RunDir(tmp_path / "run")
    metrics = fit_classifier(cfg, "clf", ccfg, *goemotions, run_dir)
    assert metrics["epoch"] == 1 and metrics["resumed_from"] == 0
    assert metrics["val_examples"] == 32  # validation is not split between the workers
    assert 0 <= metrics["val_recall@1"] <= metrics["val_recall@2"] <= 1 and metrics["train_loss"] > 0
    model, tokenizer, meta = load_classifier(run_dir.path("models/clf"))
    assert meta["config"]["train"]["num_workers"] == 2 and meta["metrics"]["epoch"] == 1
    assert load_config(None, base=json.loads(Path(run_dir.path("models/clf/ecr_config.json")).read_text())) == cfg
    checkpoints = [p for p in Path(run_dir.path("train")).glob("clf-*/checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 2  # one per epoch


def test_a_rerun_resumes_from_the_last_checkpoint(ray_local, tmp_path, goemotions):
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    rows = [{"text": r["text"], "targets": multi_hot(r["labels"])} for r in goemotions[0]]
    val = [{"text": r["text"], "targets": multi_hot(r["labels"])} for r in goemotions[1]]

    def fit(epochs):
        config = {"classifier": dataclasses.asdict(tiny_gpt2(epochs=epochs)), "allow_download": False}
        return TorchTrainer(
            train_loop, train_loop_config=config, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(name="resume", storage_path=str(tmp_path)),
            datasets={"train": ray.data.from_items(rows), "val": ray.data.from_items(val)},
        ).fit()

    first = fit(1)
    assert first.metrics["epoch"] == 0
    resumed = fit(3)  # the same run name and storage: Ray Train hands the loop the last checkpoint
    assert resumed.metrics["resumed_from"] == 1 and resumed.metrics["epoch"] == 2  # epoch 0 was not trained again
    with resumed.checkpoint.as_directory() as folder:
        assert torch.load(Path(folder) / "state.pt", weights_only=False)["epoch"] == 2
