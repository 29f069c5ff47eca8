"""Building, saving and loading the recommender, with the config it was trained with beside it.

A saved model is `model.safetensors` + `tables.npz` (the co-occurrence tables its channels read) +
`recommender.json` (the resolved rec config, the KG and context sizes, metrics). Loading with a config whose architecture differs is refused, naming
every mismatching key.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ecr_ray.artifacts import tables_bytes, tables_from_file
from ecr_ray.config import RecConfig, from_dict

# keys that change the weights' shapes or meaning; training knobs (lr, epochs, ...) may differ
ARCHITECTURE_KEYS = ("context_encoder", "context_model", "context_max_length", "hidden", "num_bases", "max_entities",
                     "variant", "local_emotion", "global_emotion", "cooccurrence_channel", "copy_channel", "recency_decay", "beta",
                     "max_emotions", "prompt")
META_FILE, TABLES_FILE = "recommender.json", "tables.npz"


def model_meta(kg_dir: str, context_dim: int, tables: dict) -> dict:
    """What, besides the config, a model is built from (sent to every Ray Train worker): the KG, the
    context size and the training dialogues' tables (rec/cooccurrence.py)."""
    return {"kg_dir": str(kg_dir), "context_dim": int(context_dim), "tables": tables}


def build_recommender(cfg: RecConfig, meta: dict, allow_download: bool = False):
    import torch

    from ecr_ray.data.kg import load_kg
    from ecr_ray.rec.model import ECRRecommender

    kg = load_kg(meta["kg_dir"])
    torch.manual_seed(cfg.train.seed)
    return ECRRecommender(cfg, kg.num_entities, kg.num_relations, kg.edges(), kg.item_ids, meta["tables"], meta["context_dim"],
                          allow_download)


def save_recommender(model, meta: dict, folder: str | Path, metrics: dict) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not _frozen(model, k)}
    save_file(state, folder / "model.safetensors")
    (folder / TABLES_FILE).write_bytes(tables_bytes(model.tables))
    info = {"rec": dataclasses.asdict(model.cfg), "kg_dir": meta["kg_dir"], "context_dim": meta["context_dim"],
            "num_entities": int(model.kg.nodes.shape[0]), "num_items": int(model.item_ids.shape[0]), "metrics": metrics}
    (folder / META_FILE).write_text(json.dumps(info, indent=2))


def _frozen(model, key: str) -> bool:
    """The prompt path's frozen pretrained models are rebuilt from their names, not saved."""
    prompt = model.cfg.prompt
    return (key.startswith("context.text_encoder.") and prompt.text_encoder is not None) or (
        key.startswith("context.lm.") and prompt.lm is not None)


def check_compatible(saved: dict, cfg: RecConfig, where: str) -> None:
    current = dataclasses.asdict(cfg)
    diffs = [f"rec.{k}: trained {saved['rec'][k]!r}, config {current[k]!r}" for k in ARCHITECTURE_KEYS if saved["rec"][k] != current[k]]
    if diffs:
        raise ValueError(f"the recommender in {where} was trained with another config ({'; '.join(diffs)}); "
                         "re-train it with `ecr-ray run` for this config, or evaluate with the config it was trained with")


def load_recommender(folder: str | Path, cfg: RecConfig | None = None, allow_download: bool = False):
    """(model in eval mode, info); with `cfg`, refuses a model trained for another architecture."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / META_FILE).exists():
        raise FileNotFoundError(f"no trained recommender in {folder} (run `ecr-ray run --stages rec` first)")
    info = json.loads((folder / META_FILE).read_text())
    if cfg is not None:
        check_compatible(info, cfg, str(folder))
    state = load_file(folder / "model.safetensors")
    meta = model_meta(info["kg_dir"], info["context_dim"], tables_from_file(folder / TABLES_FILE))
    model = build_recommender(from_dict(RecConfig, info["rec"]), meta, allow_download)
    if model.kg.nodes.shape[0] != info["num_entities"]:
        raise ValueError(f"the recommender in {folder} was trained on a KG of {info['num_entities']} entities, "
                         f"but {info['kg_dir']} now holds {model.kg.nodes.shape[0]}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _frozen(model, k)]
    if missing or unexpected:
        raise ValueError(f"{folder}/model.safetensors does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval(), info
