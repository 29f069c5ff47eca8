"""The recommender's plain parts: examples, co-occurrence, metrics, model, checkpoints, prompt path."""
import dataclasses
import itertools

import numpy as np
import pytest
import torch

from ecr_ray.config import RecConfig, load_config
from ecr_ray.data.kg import load_kg
from ecr_ray.emotion.labels import FEEDBACK_WEIGHTS, LABELS
from ecr_ray.rec.checkpoint import (
    build_recommender,
    load_recommender,
    model_meta,
    save_recommender,
)
from ecr_ray.rec.cooccurrence import emotion_neighbours
from ecr_ray.rec.features import build_examples, emotion_turn, pad_batch
from ecr_ray.rec.metrics import auc, rec_metrics, target_ranks
from ecr_ray.rec.model import feedback_weights, rec_loss

S, R = "seeker", "recommender"


def _probs(top: int) -> list[float]:
    p = [0.01] * len(LABELS)
    p[top] = 0.9
    return p


def test_emotion_of_an_entity_is_the_users_mention_or_reply():
    roles = [S, R, S, R, R]
    assert emotion_turn(0, roles, 5) == 0  # the user mentioned it
    assert emotion_turn(1, roles, 5) == 2  # the recommender did; the user's reply carries the emotion
    assert emotion_turn(3, roles, 5) is None  # followed by the recommender
    assert emotion_turn(1, roles, 2) is None  # the reply is not in the context yet


def test_examples_count_what_they_skip():
    base = {"split": "train", "conversation_id": 7, "context": ["hi", "try Heat", "loved it"], "context_roles": [S, R, S]}
    turns = [
        {**base, "turn": 3, "entities": [10, 11], "entity_turns": [0, 1], "target_items": [100, -1, 101], "target_feedback": [1, 0, 2]},
        {**base, "turn": 3, "entities": [], "entity_turns": [], "target_items": [100], "target_feedback": [0]},  # no linked entity
        {**base, "turn": 5, "entities": [10], "entity_turns": [0], "target_items": [], "target_feedback": []},  # no target
    ]
    probs = {(7, 0): _probs(0), (7, 2): _probs(2)}
    rows, counts = build_examples(turns, probs, {100: 0, 101: 1}, max_entities=8)
    assert counts == {"turns": 3, "turns_without_target": 1, "targets_outside_kg": 1, "turns_with_kg_target": 2,
                      "examples_without_entities": 1, "examples": 3}
    assert [(r["item"], r["feedback"]) for r in rows] == [(0, 1), (1, 2), (0, 0)]
    assert rows[0]["entity_emotions"] == [_probs(0), _probs(2)]  # entity 11 gets the user's reply's emotion
    assert rows[0]["context_text"] == "User: hi\nRecommender: try Heat\nUser: loved it"
    ids, emo = pad_batch([r["entities"] for r in rows], [r["entity_emotions"] for r in rows])
    assert ids.tolist() == [[10, 11], [10, 11], [-1, -1]] and emo.shape == (3, 2, 9) and emo[2].sum() == 0


def test_cooccurrence_counts_only_overlapping_emotions():
    def dialogue(cid, mentions):
        return {"conversation_id": cid, "utterances": [{"role": S, "entities": [e]} for e in mentions]}

    dialogues = [dialogue(1, [5, 6, 7]), dialogue(2, [5, 6]), dialogue(3, [5, 7])]
    happy, sad = LABELS.index("happy"), LABELS.index("negative")
    probs = {(1, 0): _probs(happy), (1, 1): _probs(happy), (1, 2): _probs(sad),
             (2, 0): _probs(happy), (2, 1): _probs(happy), (3, 0): _probs(sad), (3, 1): _probs(sad)}
    ids, weights, stats = emotion_neighbours(dialogues, probs, num_entities=10, top=1, k=2, min_count=1)
    # 5 met in 3 dialogues; with 6 in two of them (same emotion), with 7 once (dialogue 3: both sad)
    assert ids[5].tolist() == [6, 7] and weights[5] == pytest.approx([2 / 3, 1 / 3])
    assert ids[6].tolist()[:1] == [5] and weights[6][0] == pytest.approx(1.0) and weights[6][1] == 0
    assert stats["entities_with_emotion"] == 3
    # pairs met only once drop out with min_count=2
    strict, _, _ = emotion_neighbours(dialogues, probs, 10, top=1, k=2, min_count=2)
    assert strict[5].tolist() == [6, 0]


def test_auc_matches_pair_counting_and_recall_uses_ranks():
    rng = np.random.default_rng(0)
    pos, neg = rng.random(30).round(1), rng.random(20).round(1)  # rounded: ties on purpose
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    assert auc(pos, neg) == pytest.approx(np.mean(pairs))
    assert auc([], neg) is None

    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    ranks, probs = target_ranks(logits, [2, 1])
    assert ranks.tolist() == [1, 0] and probs[1] == pytest.approx(torch.softmax(logits[1], 0)[1].item())
    m = rec_metrics(ranks=[0, 5, 60, 9], probs=[0.9, 0.5, 0.2, 0.3], feedback=[1, 0, 1, 2], auc_batch_size=2)
    assert (m["recall@1"], m["recall@10"], m["recall@50"]) == (0.25, 0.75, 0.75)
    assert (m["recall_true@1"], m["recall_true@10"], m["recall_true@50"]) == (0.5, 0.5, 0.5)
    assert m["auc"] == pytest.approx(0.5)  # liked 0.9 beats disliked 0.5, liked 0.2 does not
    assert m["auc_per_batch"] == 1.0 and m["auc_batches"] == 1  # only the first pair of examples holds both kinds
    assert (m["liked"], m["disliked"], m["not_said"]) == (2, 1, 1)


def test_feedback_weights_come_from_the_labels_module():
    feedback = torch.tensor([1, 0, 2])
    assert feedback_weights(feedback).tolist() == [FEEDBACK_WEIGHTS[1], FEEDBACK_WEIGHTS[0], FEEDBACK_WEIGHTS[2]] == [2.0, 1.0, 0.5]
    logits, targets = torch.randn(3, 5), torch.tensor([0, 1, 2])
    plain = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    assert rec_loss(logits, targets, feedback, reweight=True).item() == pytest.approx((plain * torch.tensor([2.0, 1.0, 0.5])).mean().item())
    assert rec_loss(logits, targets, feedback, reweight=False).item() == pytest.approx(plain.mean().item())


@pytest.fixture(scope="module")
def kg(data_root):
    return load_kg(data_root / load_config("tiny").data.kg_dir)


def _model(kg, data_root, **flags):
    cfg = dataclasses.replace(RecConfig(hidden=16, num_bases=2), **flags)
    ids = np.zeros((kg.num_entities, 2), np.int64)
    weights = np.zeros((kg.num_entities, 2), np.float32)
    ids[kg.item_ids[0]] = kg.item_ids[1:3]
    weights[kg.item_ids[0]] = [0.6, 0.4]
    meta = model_meta(str(data_root / load_config("tiny").data.kg_dir), 8, ids, weights)
    return build_recommender(cfg, meta), meta


def _batch(kg, emotions_on=True):
    emotion = _probs(0) if emotions_on else [0.0] * 9
    return {"entities": [[int(kg.item_ids[0]), 5], []], "entity_emotions": [[emotion, [0.0] * 9], []],
            "context_vec": [np.ones(8, np.float32), np.zeros(8, np.float32)], "item": [0, 1], "feedback": [1, 0]}


def test_model_scores_every_item_and_handles_a_context_without_entities(kg, data_root):
    model, _ = _model(kg, data_root)
    logits = model(model.inputs(_batch(kg)))
    assert logits.shape == (2, len(kg.item_ids)) == (2, 6281)
    loss = rec_loss(logits, torch.tensor([0, 1]), torch.tensor([1, 0]), reweight=True)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)  # the empty context gives no NaN


def test_local_and_global_emotion_change_only_what_they_should(kg, data_root):
    model, _ = _model(kg, data_root)
    with torch.no_grad():
        embeds = model.kg()
        felt = model(model.inputs(_batch(kg, emotions_on=True)), embeds)
        unfelt = model(model.inputs(_batch(kg, emotions_on=False)), embeds)
    assert not torch.allclose(felt[0], unfelt[0]) and torch.allclose(felt[1], unfelt[1])
    plain, _ = _model(kg, data_root, local_emotion=False, global_emotion=False)
    assert plain.emotions is None and plain.fuse is None  # no idle parameters for DDP
    with torch.no_grad():
        no_global, _ = _model(kg, data_root, global_emotion=False)
        no_global.load_state_dict(model.state_dict())
        without = no_global(no_global.inputs(_batch(kg)), embeds)
    assert not torch.allclose(felt[0], without[0])  # entity 0 has neighbours
    assert torch.allclose(felt[1], without[1])  # no entities, no neighbours


def test_checkpoint_round_trip_and_a_mismatching_config_is_refused(kg, data_root, tmp_path):
    model, meta = _model(kg, data_root)
    save_recommender(model, meta, tmp_path / "rec", {"recall@50": 0.1})
    loaded, _ = load_recommender(tmp_path / "rec", model.cfg)
    batch = _batch(kg)
    with torch.no_grad():
        assert torch.allclose(model.eval()(model.inputs(batch)), loaded(loaded.inputs(batch)))
    assert loaded.neighbour_ids[kg.item_ids[0]].tolist() == kg.item_ids[1:3].tolist()
    with pytest.raises(ValueError, match=r"rec\.hidden: trained 16, config 32.*rec\.local_emotion"):
        load_recommender(tmp_path / "rec", dataclasses.replace(model.cfg, hidden=32, local_emotion=False))
    with pytest.raises(FileNotFoundError, match="no trained recommender"):
        load_recommender(tmp_path / "nothing")


def test_prompt_path_trains_the_prompt_module_only(kg, data_root):
    model, _ = _model(kg, data_root, context_encoder="prompt")
    ctx = model.context
    assert type(ctx.text_encoder).__name__ == "RobertaModel" and type(ctx.lm).__name__ == "GPT2Model"
    assert ctx.lm_tokenizer("Hello world")["input_ids"] == [15496, 995]  # GPT-2's real vocabulary
    batch = {**_batch(kg), "context_text": ["User: I loved Heat\nRecommender: try Ronin", ""]}
    logits = model(model.inputs(batch))
    assert logits.shape == (2, 6281) and torch.isfinite(logits).all()
    rec_loss(logits, torch.tensor([0, 1]), torch.tensor([1, 0]), reweight=True).backward()
    assert all(p.grad is None for p in ctx.lm.parameters()) and all(p.grad is None for p in ctx.text_encoder.parameters())
    assert ctx.prefix.grad is not None and ctx.prefix.grad.abs().sum() > 0
    assert model.kg.nodes.grad.abs().sum() > 0  # the entity prompts reach the KG encoder
    pretrain = model(model.inputs(batch), all_entities=True)
    assert pretrain.shape == (2, kg.num_entities)
