import numpy as np
import pytest
import torch

from ecr_ray.config import ClassifierConfig
from ecr_ray.emotion.classifier import (
    build_classifier,
    encode,
    load_classifier,
    save_classifier,
)
from ecr_ray.emotion.labels import (
    GOEMOTIONS_TO_ECR,
    LABELS,
    multi_hot,
    read_goemotions,
    top_labels,
)
from ecr_ray.emotion.metrics import emotion_metrics
from ecr_ray.models import ModelNotFound, resolve_model


def test_labels_and_the_goemotions_mapping():
    assert LABELS == ("like", "curious", "happy", "grateful", "negative", "neutral", "nostalgia", "agreement", "surprise")
    assert len(GOEMOTIONS_TO_ECR) == 28 and set(GOEMOTIONS_TO_ECR.values()) == set(LABELS) - {"nostalgia"} | {None}
    assert GOEMOTIONS_TO_ECR["admiration"] == "like" and GOEMOTIONS_TO_ECR["realization"] == "surprise"
    assert top_labels([0.1, 0.9, 0.35, 0, 0, 0, 0, 0, 0], 0.3) == ["curious", "happy"]
    assert top_labels([0.1, 0.9, 0.25, 0, 0, 0, 0, 0, 0], 0.3) == ["curious"]


def test_goemotions_mapping(data_root):
    folder = data_root / "emotion/goemotions/original"
    train = read_goemotions(folder, "train")
    assert len(train) == 42761  # of 43,410: 649 rows carry only 'caring'
    assert all(1 <= len(r["labels"]) and set(r["labels"]) <= set(LABELS) - {"nostalgia"} for r in train)
    assert len(read_goemotions(folder, "test")) == 5341


def test_metrics_by_hand():
    probs = np.array([[0.9, 0.8] + [0.0] * 7, [0.1, 0.7, 0.6] + [0.0] * 6, [0.2, 0.3] + [0.0] * 7])
    gold = np.array([multi_hot(["like"]), multi_hot(["happy", "like"]), multi_hot(["curious"])])
    m = emotion_metrics(probs, gold)
    assert m["recall@1"] == round((1 + 0 + 1) / 3, 4)  # example 2: top-1 'curious' misses
    assert m["recall@2"] == round((1 + 0.5 + 1) / 3, 4)
    # like: tp 1 (ex1), pred {ex1}, gold {ex1, ex2} -> 2/3; curious: pred {ex1, ex2, ex3}, gold {ex3} -> 2*1/(3+1); happy: pred {ex2}, gold {ex2} -> 1
    assert m["macro_f1"] == round((2 / 3 + 0.5 + 1) / 3, 4)


def test_gpt2_classifier_uses_the_real_tokenizer_and_round_trips(tmp_path):
    cfg = ClassifierConfig(backbone="gpt2", pretrained=None, gpt2_layers=1, gpt2_hidden=32, gpt2_heads=2, max_length=16)
    model, tokenizer = build_classifier(cfg)
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]  # GPT-2's BPE
    batch = encode(tokenizer, ["I loved it!", "meh"], cfg.max_length)
    logits = model(**batch)
    assert logits.shape == (2, len(LABELS))
    save_classifier(model, tokenizer, cfg, tmp_path / "m", {"recall@1": 0.5})
    loaded, tok2, meta = load_classifier(tmp_path / "m")
    assert meta["config"]["backbone"] == "gpt2" and meta["metrics"] == {"recall@1": 0.5}
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**encode(tok2, ["I loved it!", "meh"], 16)), model(**batch), atol=1e-5)


def test_minilm_is_packaged_and_checkpoints_are_checked(tmp_path):
    model, tokenizer = build_classifier(ClassifierConfig(max_length=16))
    assert sum(p.numel() for p in model.encoder.parameters()) == 22_713_216 - 147_840  # MiniLM less its unused pooler
    save_classifier(model, tokenizer, ClassifierConfig(), tmp_path / "m", {})
    meta = tmp_path / "m" / "classifier.json"
    meta.write_text(meta.read_text().replace('"nostalgia"', '"boredom"'))
    with pytest.raises(ValueError, match="trained for labels"):
        load_classifier(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="run the emotion stages first"):
        load_classifier(tmp_path / "nothing")


def test_hub_names_need_the_download_setting():
    with pytest.raises(ModelNotFound, match="models.allow_download=true"):
        resolve_model("gpt2")
    assert resolve_model("gpt2", allow_download=True) == "gpt2"
    with pytest.raises(ValueError, match="unknown classifier backbone"):
        build_classifier(ClassifierConfig(backbone="lstm"))


def test_predictor_takes_empty_long_and_non_english_text(tmp_path):
    import pyarrow as pa

    from ecr_ray.emotion.infer import EmotionPredictor

    cfg = ClassifierConfig(max_length=32)
    save_classifier(*build_classifier(cfg), cfg, tmp_path / "m", {})
    predictor = EmotionPredictor(str(tmp_path / "m"), second_threshold=0.0)
    texts = ["", "   ", "wow " * 5000, "¡Me encantó esa película!", "这部电影很好看", "I loved it"]
    out = predictor(pa.table({"utterance_id": [str(i) for i in range(6)], "text": texts}))
    assert out.num_rows == 6 and out.column("utterance_id").to_pylist() == [str(i) for i in range(6)]
    probs = np.array(out.column("probs").to_pylist())
    assert probs.shape == (6, 9) and np.isfinite(probs).all()
    assert all(len(labels) == 2 for labels in out.column("labels").to_pylist())  # threshold 0: always two
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-6)  # empty and blank read the same
