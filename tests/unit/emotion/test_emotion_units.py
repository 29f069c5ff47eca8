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


def test_stance_examples_are_the_seekers_own_answers_per_movie():
    from ecr_ray.data.redial import FEEDBACK_DISLIKE, FEEDBACK_LIKE, FEEDBACK_NOT_SAID
    from ecr_ray.emotion.stance import DISLIKED, LIKED, NO_STANCE, class_weights, stance_examples

    dialogues = [{"conversation_id": 7, "movies": [{"movie_id": 1, "title": "Titanic (1997)", "feedback": FEEDBACK_DISLIKE, "item": 11},
                                                   {"movie_id": 2, "title": "The Matrix (1999)", "feedback": FEEDBACK_LIKE, "item": None},
                                                   {"movie_id": 3, "title": "Heat (1995)", "feedback": FEEDBACK_NOT_SAID}]}]
    utterances = [{"conversation_id": 7, "split": "train", "turn": 0, "text": "I loved @2 but hated @1, @1 twice", "movie_ids": [2, 1, 1]},
                  {"conversation_id": 7, "split": "dev", "turn": 2, "text": "Heat? and @9", "movie_ids": [3, 9]}]
    rows = stance_examples(utterances, dialogues, lambda item: f"kg title {item}")
    assert [(r["title"], r["stance"], r["split"]) for r in rows] == [
        ("The Matrix (1999)", LIKED, "train"), ("kg title 11", DISLIKED, "train"), ("Heat (1995)", NO_STANCE, "dev")]  # 9: no answer
    weights = class_weights([LIKED] * 90 + [DISLIKED] * 4 + [NO_STANCE] * 6)
    assert weights[DISLIKED] > weights[NO_STANCE] > weights[LIKED] and weights[DISLIKED] == pytest.approx((100 / 12) ** 0.5)


def test_stance_metrics_by_hand_and_ecrs_utterance_reading():
    from ecr_ray.emotion.stance import DISLIKED, LIKED, NO_STANCE, stance_metrics, utterance_stance

    gold = [LIKED, LIKED, DISLIKED, NO_STANCE]
    m = stance_metrics([LIKED, DISLIKED, DISLIKED, LIKED], gold)
    assert m["recall_liked"] == 0.5 and m["recall_disliked"] == 1.0 and m["recall_no stance"] == 0.0 and m["accuracy"] == 0.5
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)  # liked: P 1/2 R 1/2; disliked: P 1/2 R 1; none: 0
    probs = [0.01] * len(LABELS)
    probs[LABELS.index("neutral")] = 0.05  # none passes beta: the top label is kept (ECR's fallback)
    both = list(probs)
    both[LABELS.index("like")], both[LABELS.index("negative")] = 0.6, 0.5
    assert utterance_stance(both, 0.1, 3) == LIKED  # ECR's reading: "like" covers every movie of the utterance
    both[LABELS.index("like")] = 0.05
    assert utterance_stance(both, 0.1, 3) == DISLIKED and utterance_stance(probs, 0.1, 3) == NO_STANCE


def test_a_stance_model_saves_with_its_own_labels_and_reads_title_utterance_pairs(tmp_path):
    from ecr_ray.emotion.stance import STANCES, StancePredictor

    cfg = ClassifierConfig(max_length=24)
    model, tokenizer = build_classifier(cfg, labels=STANCES)
    save_classifier(model, tokenizer, cfg, tmp_path / "s", {}, STANCES)
    with pytest.raises(ValueError, match="trained for labels"):
        load_classifier(tmp_path / "s")  # not an emotion classifier
    predictor = StancePredictor(str(tmp_path / "s"))
    text = "I loved The Matrix but I hated Titanic " + "so much " * 40
    probs = predictor.predict(["The Matrix", "Titanic", "Titanic"], [text, text, ""])
    assert probs.shape == (3, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.abs(probs[0] - probs[1]).max() > 1e-4  # the title is read even when the utterance is cut


def test_a_movie_is_read_in_the_clause_that_names_it():
    from ecr_ray.emotion.stance import mention_clause

    said = "I loved The Matrix and Inception, but I hated Titanic (1997). The Shining was boring to me, I much preferred Scream!"
    assert mention_clause(said, "Inception") == "I loved The Matrix and Inception"
    assert mention_clause(said, "Titanic") == "but I hated Titanic (1997)."
    assert (mention_clause(said, "The Shining"), mention_clause(said, "Scream")) == ("The Shining was boring to me", "I much preferred Scream!")
    assert mention_clause(said, "Heat") == said  # not named: the whole message
    assert mention_clause("Have you seen Nothing But Trouble?", "Nothing But Trouble") == "Have you seen Nothing But Trouble?"  # a break inside the title
