"""The recommender's plain parts: examples, co-occurrence, metrics, model, checkpoints, prompt path."""
import dataclasses
import itertools

import numpy as np
import pytest
import torch

from ecr_ray.config import FeedbackWeights, RecConfig, load_config
from ecr_ray.data.kg import load_kg
from ecr_ray.emotion.labels import LABELS
from ecr_ray.rec.checkpoint import build_recommender, load_recommender, model_meta, save_recommender
from ecr_ray.rec.cooccurrence import cooccurrence_tables
from ecr_ray.rec.features import as_columns, build_examples, emotion_turn, item_index, kept_emotions, pad_mentions
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
    rows, counts = build_examples(turns, probs, {100: 0, 101: 1}, RecConfig(max_entities=8))
    assert counts == {"turns": 3, "turns_without_target": 1, "targets_outside_kg": 1, "turns_with_kg_target": 2,
                      "examples_without_entities": 1, "examples": 3}
    assert [(r["item"], r["feedback"]) for r in rows] == [(0, 1), (1, 2), (0, 0)]
    kept = lambda top: [0.9 if i == top else 0.0 for i in range(9)]  # noqa: E731  (0.01 is below beta)
    assert rows[0]["entity_emotions"] == [kept(0), kept(2)]  # entity 11 gets the user's reply's emotion
    assert rows[0]["entity_by_seeker"] == [1, 0]
    assert rows[0]["context_text"] == "User: hi\nRecommender: try Heat\nUser: loved it"
    ids, emo, seeker = pad_mentions(as_columns(rows))
    assert ids.tolist() == [[10, 11], [10, 11], [-1, -1]] and emo.shape == (3, 2, 9) and emo[2].sum() == 0
    assert seeker.tolist() == [[1, 0], [1, 0], [0, 0]]


def test_kept_emotions_are_the_labels_above_beta_at_most_n_f():
    p = [0.5, 0.2, 0.15, 0.12, 0.02, 0.01, 0, 0, 0]
    assert kept_emotions(p, beta=0.1, most=3) == [0.5, 0.2, 0.15, 0, 0, 0, 0, 0, 0]  # 0.12 is the fourth
    assert kept_emotions(p, beta=0.18, most=3) == [0.5, 0.2, 0, 0, 0, 0, 0, 0, 0]
    assert kept_emotions([0.05, 0.07, *[0.02] * 7], beta=0.1, most=3) == [0.0, 0.07, *[0.0] * 7]  # none passes: the top label


def test_neighbours_count_directed_mentions_whose_emotions_overlap(kg):
    happy, sad = LABELS.index("happy"), LABELS.index("negative")
    a, b, c = 5, 6, 7
    # one dialogue: a (happy), b (happy), a again (happy), c (sad); b's second mention by the
    # recommender has no reply, so no emotion
    dialogue = {"conversation_id": 1, "utterances": [
        {"role": S, "entities": [a]}, {"role": S, "entities": [b]}, {"role": S, "entities": [a]}, {"role": S, "entities": [c]},
        {"role": R, "entities": [b]}]}
    probs = {(1, 0): _probs(happy), (1, 1): _probs(happy), (1, 2): _probs(happy), (1, 3): _probs(sad)}
    tables, stats = cooccurrence_tables([dialogue], probs, kg, item_index(kg), RecConfig(node_init="random"))
    k = tables["neighbours"].to_dense()
    # earlier -> later, per occurrence: a->b, a->a (same entity: no), b->a; c shares no emotion
    assert k[a, b] == 1 and k[b, a] == 1 and k[a, c] == 0 and k[c, a] == 0 and k.sum() == 2
    assert stats["emotion_pairs"] == 2 and stats["entities_with_neighbours"] == 2


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
    assert "recall_new@1" not in m
    new = rec_metrics(ranks=[0, 5, 60, 9], probs=[0.9, 0.5, 0.2, 0.3], feedback=[1, 0, 1, 2], auc_batch_size=2, new=[0, 1, 1, 0])
    assert (new["recall_new@1"], new["recall_new@10"], new["recall_new@50"], new["new"]) == (0.0, 0.5, 0.5, 2)
    assert new["recall@10"] == m["recall@10"]  # the overall figures do not change


def test_a_target_the_dialogue_mentioned_before_is_not_new():
    """Recall_New@k counts only targets no copy could find: not among the context's entities, however far back."""
    turn = {"split": "dev", "conversation_id": 3, "context": ["a", "b", "c"], "context_roles": [S, R, S], "turn": 3,
            "entities": [100, 11, 12], "entity_turns": [0, 1, 2], "target_items": [100, 101], "target_feedback": [1, 1]}
    rows, _ = build_examples([turn], {}, {100: 0, 101: 1}, RecConfig(max_entities=1))  # 100 falls out of the kept entities
    assert [(r["item"], r["new"]) for r in rows] == [(0, 0), (1, 1)] and rows[0]["entities"] == [12]


def test_feedback_weights_are_rec_knobs_with_the_papers_defaults():
    feedback = torch.tensor([1, 0, 2])  # ReDial's codes: liked, disliked, did not say
    assert feedback_weights(feedback, FeedbackWeights()).tolist() == [2.0, 1.0, 0.5]
    assert feedback_weights(feedback, FeedbackWeights(like=3.0, not_said=0.0)).tolist() == [3.0, 1.0, 0.0]
    logits, targets = torch.randn(3, 5), torch.tensor([0, 1, 2])
    plain = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    assert rec_loss(logits, targets, feedback, FeedbackWeights()).item() == pytest.approx((plain * torch.tensor([2.0, 1.0, 0.5])).mean().item())
    assert rec_loss(logits, targets, feedback, None).item() == pytest.approx(plain.mean().item())


@pytest.fixture(scope="module")
def kg(data_root):
    return load_kg(data_root / load_config("tiny").data.kg_dir)


def _model(kg, data_root, **flags):
    """A small model over the real KG, its tables counted from two constructed dialogues."""
    cfg = dataclasses.replace(RecConfig(hidden=16, num_bases=2, node_init="random", dropout=0.0), **flags)
    tables, _ = cooccurrence_tables(_dialogues(kg), _emotions(), kg, item_index(kg), cfg)
    meta = model_meta(str(data_root / load_config("tiny").data.kg_dir), 8, tables)
    return build_recommender(cfg, meta), meta


def _dialogues(kg):
    i0, i1, i2 = (int(i) for i in kg.item_ids[:3])
    return [{"conversation_id": 1, "utterances": [{"role": S, "entities": [i0, 5]}, {"role": R, "entities": [i1]},
                                                  {"role": S, "entities": [i2]}]},
            {"conversation_id": 2, "utterances": [{"role": S, "entities": [5]}, {"role": R, "entities": [i1]}]}]


def _emotions():
    return {(1, 0): _probs(0), (1, 2): _probs(0), (2, 0): _probs(0)}


def _batch(kg, emotions_on=True):
    emotion = _probs(0) if emotions_on else [0.0] * 9
    return {"conversation_id": [1, 3], "entities": [[int(kg.item_ids[0]), 5], []], "entity_emotions": [[emotion, [0.0] * 9], []],
            "entity_by_seeker": [[1, 1], []], "context_vec": [np.ones(8, np.float32), np.zeros(8, np.float32)], "item": [0, 1],
            "feedback": [1, 0]}


@pytest.mark.parametrize("mixture", [False, True])
def test_model_scores_every_item_and_handles_a_context_without_entities(kg, data_root, mixture):
    model, _ = _model(kg, data_root, user_mixture=mixture)
    inputs = model.inputs(_batch(kg))
    logits = model(inputs)
    assert logits.shape == (2, len(kg.item_ids)) == (2, 6281)
    if mixture:  # the learned part is a distribution's log: it sums to 1 over the items
        learned = model(inputs, channels=False)
        assert torch.allclose(torch.logsumexp(learned, -1), torch.zeros(2), atol=1e-5)
        # the mixture of example 0's three components (ECR's vector, its two entities), example 1's one, by hand
        model.eval()
        users, log_weights, example = model.user_vector(inputs, model.kg(), components=True)
        assert example.tolist() == [0, 0, 0, 1]
        each = torch.softmax(users @ model.kg()[model.item_ids].T + model.item_bias, -1) * log_weights.exp()[:, None]
        assert torch.allclose(model(inputs, channels=False).exp(), torch.stack([each[:3].sum(0), each[3]]), atol=1e-6)
    # no entities: no co-occurrence, no copy, no neighbours; the item bias (popularity) and the user vector alone
    assert inputs["cooccurrence"][1].abs().sum() == 0 and inputs["neighbour_items"][1].abs().sum() == 0
    assert (inputs["mentioned_items"][1] < 0).all()
    loss = rec_loss(logits, torch.tensor([0, 1]), torch.tensor([1, 0]), FeedbackWeights())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)  # the empty context gives no NaN


def test_counts_leave_the_examples_own_dialogue_out(kg, data_root):
    """An example of a counted dialogue sees exactly the tables of the other dialogues."""
    from ecr_ray.rec.cooccurrence import own_contributions

    model, _ = _model(kg, data_root, node_init="random")
    dialogues = _dialogues(kg)
    own = own_contributions(dialogues, _emotions(), item_index(kg), model.cfg)
    batch = {**_batch(kg), "conversation_id": [1, 1]}
    seen = model.inputs(batch, own)
    others, _ = cooccurrence_tables(dialogues[1:], _emotions(), kg, item_index(kg), model.cfg)
    alone = build_recommender(model.cfg, {**_model(kg, data_root)[1], "tables": others})
    expected = alone.inputs(batch)  # dialogue 1 never counted
    for key in ("cooccurrence", "neighbour_items"):
        assert torch.allclose(seen[key], expected[key]), key
    assert torch.allclose(seen["neighbours"].to_dense(), expected["neighbours"].to_dense())
    unseen = model.inputs(batch)  # without `own` the counts include dialogue 1: entity 5 met item 1 there and in dialogue 2
    assert unseen["cooccurrence"][0, 0, 1] > seen["cooccurrence"][0, 0, 1] > 0
    # the evidence of the entity the user liked (label 0, "like"), counted apart, is left out the same way
    assert torch.allclose(seen["cooccurrence"][:, 1:], expected["cooccurrence"][:, 1:])
    assert model.inputs(batch)["cooccurrence"][0, 1].sum() > seen["cooccurrence"][0, 1].sum() == 0  # it met items in dialogue 1 only
    repeated = {**batch, "entities": [[int(kg.item_ids[0]), 5, int(kg.item_ids[0])], []],
                "entity_emotions": [[_probs(0), [0.0] * 9, _probs(0)], []], "entity_by_seeker": [[1, 1, 1], []]}
    for key in ("cooccurrence", "neighbour_items"):  # an entity mentioned twice is left out at both positions
        assert torch.allclose(model.inputs(repeated, own)[key], alone.inputs(repeated)[key], atol=1e-6), key
    unknown = model.inputs({**batch, "entities": [[kg.num_entities - 1], []], "entity_emotions": [[[0.0] * 9], []],
                            "entity_by_seeker": [[1], []]})
    assert unknown["cooccurrence"].abs().sum() == 0  # an entity never seen in training contributes nothing


def test_copy_channel_scores_mentioned_items_by_who_said_them_and_the_users_emotion(kg, data_root):
    model, _ = _model(kg, data_root, global_emotion=False, cooccurrence_channel=False)
    with torch.no_grad():
        model.copy_weights.copy_(torch.tensor([2.0, 0.5]))
        model.copy_gate.copy_(torch.arange(9.0))
        liked, negative = (kept_emotions(_probs(LABELS.index(e)), 0.1, 3) for e in ("like", "negative"))
        batch = {**_batch(kg), "entities": [[int(kg.item_ids[0]), int(kg.item_ids[1]), 5], []],
                 "entity_emotions": [[negative, liked, liked], []], "entity_by_seeker": [[1, 0, 1], []]}
        copy = model.channels(model.inputs(batch))
    # seeker 2.0 + 0.9 x gate[negative]; recommender 0.5 + 0.9 x gate[like]
    assert copy[0, 0] == pytest.approx(2.0 + 0.9 * LABELS.index("negative")) and copy[0, 1] == pytest.approx(0.5)
    assert copy[0, 2:].abs().sum() == 0 and copy[1].abs().sum() == 0  # entity 5 is no item; the empty context has none


def test_zero_initialised_fusion_and_emotion_weights_equal_the_base_model_at_step_0(kg, data_root):
    base, _ = _model(kg, data_root, local_emotion=False, global_emotion=False)
    full, _ = _model(kg, data_root)
    missing, unexpected = full.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and set(missing) == {"emotions.weight", "fuse.weight", "fuse.bias", "emotion_weights", "copy_gate",
                                               "neighbour_weight", "global_weight"}
    assert not hasattr(base, "fuse") and not hasattr(base, "global_weight")  # no idle parameters for DDP
    with torch.no_grad():
        assert torch.allclose(full(full.inputs(_batch(kg))), base(base.inputs(_batch(kg))), atol=1e-5)


def test_diagnostics_read_the_emotion_signal_and_how_far_each_emotion_part_moves_the_user(kg, data_root):
    from ecr_ray.data.redial import FEEDBACK_DISLIKE, FEEDBACK_LIKE
    from ecr_ray.rec.diagnostics import emotion_signal, part_effects

    like, negative = LABELS.index("like"), LABELS.index("negative")
    dialogues = [{"conversation_id": 1, "movies": [{"movie_id": 10, "feedback": FEEDBACK_LIKE}, {"movie_id": 11, "feedback": FEEDBACK_DISLIKE}],
                  "utterances": [{"role": S, "movie_ids": [10]}, {"role": S, "movie_ids": [11]}, {"role": S, "movie_ids": [10, 11]},
                                 {"role": R, "movie_ids": [11]}]}]
    signal = emotion_signal(dialogues, {(1, 0): _probs(like), (1, 1): _probs(negative), (1, 2): _probs(like), (1, 3): _probs(like)},
                            RecConfig())
    assert signal["utterances"] == {"liked": 1, "disliked": 1}  # one movie named, by the seeker, with a stance
    assert signal["auc of P(like), liked vs disliked"] == signal["auc of P(negative), disliked vs liked"] == 1.0
    assert (signal["kept 'like' when liked"], signal["kept 'like' when disliked"]) == (1.0, 0.0)

    model, _ = _model(kg, data_root)
    batch = _batch(kg)
    rows = [{k: v[i] for k, v in batch.items()} for i in range(2)]
    effects = part_effects(model, rows, model.cfg)
    assert effects["entities reacted to"] == 0.5  # two entities mentioned, one reacted to
    # untrained: the zero-initialised fusion and neighbour weight leave the user representation alone
    assert effects["local fusion: state change / state"] == 0 and effects["neighbour weight"] == 0
    assert effects["neighbour term / pooled entities"] == 0
    with torch.no_grad():
        model.fuse.bias.fill_(1.0), model.neighbour_weight.fill_(1.0)
    moved = part_effects(model, rows, model.cfg)
    assert moved["local fusion: state change / state"] > 0.1 and moved["neighbour term / pooled entities"] > 0


def test_the_paper_variant_is_ecrs_model_alone(kg, data_root):
    """rec.variant=paper: no count, copy or neighbour-score channel; the score is user . item + bias. The hybrid's
    learned part is that same model (what it trains; what rec-eval reports as "paper")."""
    paper, _ = _model(kg, data_root, variant="paper")
    hybrid, _ = _model(kg, data_root)
    for name in ("cooccurrence_weights", "emotion_weights", "copy_weights", "copy_gate", "global_weight"):
        assert not hasattr(paper, name) and hasattr(hybrid, name), name
    assert hasattr(paper, "neighbour_weight") and hasattr(paper, "fuse")  # global and local emotion stay in the user vector
    with torch.no_grad():
        inputs = paper.inputs(_batch(kg))
        assert "cooccurrence" not in inputs and paper.channels(inputs) == 0.0
        embeds = paper.kg()
        expected = paper.user_vector(inputs, embeds) @ embeds[paper.item_ids].T + paper.item_bias
        assert torch.allclose(paper(inputs, embeds), expected)
        assert paper(inputs, embeds).std() > 0  # an untrained paper model already ranks by its representations
        both = hybrid.inputs(_batch(kg))
        assert torch.allclose(hybrid(both, channels=False), paper(inputs), atol=1e-6)
        learned_only = hybrid.inputs(_batch(kg), channels=False)  # what training reads: no counts to compute
        assert "cooccurrence" not in learned_only and torch.allclose(hybrid(learned_only, channels=False), paper(inputs), atol=1e-6)
        assert torch.allclose(hybrid(both), hybrid.learned_weight * paper(inputs) + hybrid.channels(both), atol=1e-5)


def test_selection_metric_means_recall_and_auc():
    from ecr_ray.rec.metrics import selection_metric

    metrics = {"recall@1": 0.0, "recall@10": 0.2, "recall@50": 0.4, "auc": 0.6}
    assert selection_metric(metrics, "mean_recall") == pytest.approx(0.2)
    assert selection_metric(metrics, "mean_recall_auc") == pytest.approx(0.3)
    assert selection_metric({**metrics, "auc": None}, "mean_recall_auc") == pytest.approx((0.6 + 0.5) / 4)  # no disliked: chance


def test_channel_weights_are_fitted_for_ranking_then_frozen(kg, data_root):
    """Targets the seeker named but no training dialogue holds: only the copy channel can rank them."""
    from ecr_ray.rec.channels import GRIDS, apply_channels, fit_channels

    model, meta = _model(kg, data_root)
    with torch.no_grad():
        model.copy_weights.zero_()  # copy off: the unseen target ties with every unscored item
    unseen = [int(i) for i in kg.item_ids[3:9]]
    rows = [{"conversation_id": 10 + k, "entities": [5, e], "entity_emotions": [[0.0] * 9, [0.0] * 9], "entity_by_seeker": [1, 1],
             "context_vec": np.ones(8, np.float32), "item": 3 + k, "feedback": 1} for k, e in enumerate(unseen)]
    fitted = fit_channels(model, rows, {}, dataclasses.replace(model.cfg, early_stop_metric="mean_recall"))
    assert fitted["metric"] == {"name": "mean_recall", "before": 0.0, "after": 1.0} and fitted["examples"] == len(rows)
    assert fitted["weights"]["copy, seeker"] > 0 and set(fitted["weights"]) == set(GRIDS)
    assert all(v in GRIDS[k][2] or (k == "popularity" and v == pytest.approx(0.1)) for k, v in fitted["weights"].items())
    fresh = build_recommender(model.cfg, meta)
    apply_channels(fresh, fitted["weights"])
    with torch.no_grad():
        batch = model.inputs(as_columns(rows))
        assert torch.allclose(fresh.channels(batch), model.channels(batch))
    assert not fresh.copy_weights.requires_grad and not fresh.cooccurrence_weights.requires_grad
    assert fresh.fast_parameters() == [fresh.item_bias, fresh.neighbour_weight]  # what trains at rec.bias_lr


def test_the_hybrid_learns_what_counts_cannot_see_and_its_weight_is_fitted_on_held_out_dialogues(kg, data_root):
    """The target is set by the context vector alone (the same entities everywhere, no counted dialogue holds
    the targets): the channels rank it at chance. Trained as rec-train trains it (the learned score, the
    feedback-weighted loss), the learned part finds it; `fit_mix` then weights it in on held-out dialogues."""
    from ecr_ray.rec.channels import _channel_knobs, _slot, fit_mix
    from ecr_ray.rec.evaluate import rank_rows, variant_ranks

    model, _ = _model(kg, data_root, early_stop_metric="mean_recall")
    targets = (10, 11, 12, 13)

    def rows(first_id):
        return [{"conversation_id": first_id + n, "entities": [5], "entity_emotions": [[0.0] * 9], "entity_by_seeker": [1],
                 "context_vec": np.eye(8, dtype=np.float32)[k] * 3, "item": targets[k], "feedback": 1, "new": 1}
                for n, k in enumerate(np.random.default_rng(first_id).integers(0, len(targets), 64))]

    train, held = rows(100), rows(1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    model.train()
    for _ in range(60):
        batch = as_columns(train)
        loss = rec_loss(model(model.inputs(batch), channels=False), torch.tensor(batch["item"]), torch.tensor(batch["feedback"]),
                        FeedbackWeights())
        optimizer.zero_grad(), loss.backward(), optimizer.step()
    recall = lambda part: (rank_rows(model, held, model.cfg, part)[0] < 10).mean()  # noqa: E731
    assert recall("channels") < 0.1 and recall("learned") == 1.0
    alone = {"metrics": {"channel_fit": {"weights": {name: _slot(p, i).item() for name, p, i, _ in _channel_knobs(model)}}}}
    channels_alone = rank_rows(model, held, model.cfg, "channels")
    mix = fit_mix(model, held, {}, model.cfg)
    assert mix["weight"] > 0 and mix["curve"][0.0] < mix["curve"][mix["weight"]] and model.learned_weight.item() == pytest.approx(mix["weight"])
    assert set(mix["channels"]) == set(alone["metrics"]["channel_fit"]["weights"])  # refitted beside the learned score
    assert recall("all") == 1.0
    # "channels alone" is the channels as they were fitted alone, not as refitted beside the learned score
    assert np.array_equal(variant_ranks(model, held, model.cfg, alone)["channels alone"][0], channels_alone[0])


def test_checkpoint_round_trip_and_a_mismatching_config_is_refused(kg, data_root, tmp_path):
    model, meta = _model(kg, data_root)
    save_recommender(model, meta, tmp_path / "rec", {"recall@50": 0.1})
    loaded, _ = load_recommender(tmp_path / "rec", model.cfg)
    batch = _batch(kg)
    with torch.no_grad():
        assert torch.allclose(model.eval()(model.inputs(batch)), loaded(loaded.inputs(batch)))
    assert torch.equal(loaded.tables["items"].to_dense(), model.tables["items"].to_dense())
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
    torch.nn.init.normal_(model.user.weight, std=0.1)  # zero at the start: gradients reach the context from the second step
    logits = model(model.inputs(batch))
    assert logits.shape == (2, 6281) and torch.isfinite(logits).all()
    rec_loss(logits, torch.tensor([0, 1]), torch.tensor([1, 0]), FeedbackWeights()).backward()
    assert all(p.grad is None for p in ctx.lm.parameters()) and all(p.grad is None for p in ctx.text_encoder.parameters())
    assert ctx.prefix.grad is not None and ctx.prefix.grad.abs().sum() > 0
    assert model.kg.nodes.grad.abs().sum() > 0  # the entity prompts reach the KG encoder
    pretrain = model(model.inputs(batch), all_entities=True)
    assert pretrain.shape == (2, kg.num_entities)


def test_pretraining_predicts_every_entity_from_those_before_it(kg):
    from ecr_ray.rec.pretrain import entity_examples

    dialogue = {"conversation_id": 4, "utterances": [
        {"role": S, "text": "I liked Heat", "entities": [10]}, {"role": R, "text": "then Ronin, with De Niro", "entities": [11, 12]},
        {"role": S, "text": "hi", "entities": []}, {"role": S, "text": "Heat again", "entities": [10, 10]}]}
    rows = entity_examples([dialogue], {(4, 0): _probs(0)}, RecConfig(), context_dim=4)
    # nothing before the first mention; both of the recommender's entities; Heat once, its earlier mention moved last
    assert [(r["turn"], r["item"]) for r in rows] == [(1, 11), (1, 12), (3, 10)]
    assert rows[0]["entities"] == [10] and rows[2]["entities"] == [10, 11, 12] and rows[2]["entity_by_seeker"] == [1, 0, 0]
    assert rows[0]["context_vec"] == [0.0] * 4
    prompt = entity_examples([dialogue], {}, RecConfig(context_encoder="prompt"), context_dim=0)
    assert prompt[2]["context_text"] == "User: I liked Heat\nRecommender: then Ronin, with De Niro\nUser: hi"


def test_schedule_warm_up_then_cosine_and_the_stopping_split_holds_whole_dialogues():
    from ecr_ray.rec.ablations import folds
    from ecr_ray.rec.train import lr_factor, stopping_split

    lrs = [lr_factor(s, 100, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5, abs=0.02) and lrs[-1] < 0.001 and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    rows = [{"conversation_id": c, "turn": t} for c in range(20) for t in range(3)]
    train, stop = stopping_split(rows, 0.1)
    assert len(stop) == 6 and not {r["conversation_id"] for r in train} & {r["conversation_id"] for r in stop}
    parts = folds(range(10), 3)
    assert sorted(x for p in parts for x in p) == list(range(10)) and [len(p) for p in parts] == [4, 3, 3]
    with pytest.raises(ValueError, match="at least 2 folds"):
        folds(range(10), 1)


def test_cv_also_trains_full_ecr_again_with_only_the_named_knobs_changed():
    from ecr_ray.rec.ablations import also_trained

    rec = dataclasses.replace(load_config("cpu").rec, local_emotion=False,
                              cv_also={"hidden 256": {"hidden": 256}, "lr 1e-3": {"train": {"lr": 1e-3}}})
    systems = also_trained(rec)
    assert list(systems) == ["full ECR, hidden 256", "full ECR, lr 1e-3"]
    wide, fast = systems.values()
    assert wide.hidden == 256 and wide.train == rec.train and wide.cv_also == {}
    assert fast.train.lr == 1e-3 and fast.train.batch_size == rec.train.batch_size and fast.hidden == rec.hidden  # the rest of train kept
    assert wide.local_emotion and wide.global_emotion and wide.reweight and not wide.entity_stance  # full ECR, read ECR's way
    for bad in ({}, {"entity_stance": True}, {"hiden": 256}):
        with pytest.raises((ValueError, TypeError, KeyError)):
            also_trained(dataclasses.replace(rec, cv_also={"x": bad}))


def test_entity_evidence_splits_each_channels_score_between_the_mentioned_entities(kg, data_root):
    model, _ = _model(kg, data_root, copy_channel=False)
    with torch.no_grad():
        model.emotion_weights.copy_(torch.tensor([1.0, -0.5]))
        model.global_weight.fill_(0.7)
        batch = {k: v[:1] for k, v in _batch(kg).items()}
        inputs, items = model.inputs(batch), torch.arange(len(kg.item_ids))
        evidence = model.entity_evidence(batch, items)
        counts = inputs["cooccurrence"][0, 0] + inputs["cooccurrence"][0, 1] - 0.5 * inputs["cooccurrence"][0, 2]
        assert evidence["co-occurrence"].shape == (2, len(items))
        assert torch.allclose(evidence["co-occurrence"].sum(0), torch.log1p(counts), atol=1e-5)
        assert torch.allclose(evidence["emotion-related neighbours"].sum(0), 0.7 * inputs["neighbour_items"][0], atol=1e-5)
        assert (evidence["co-occurrence"] >= 0).all() and evidence["co-occurrence"].sum() > 0


def test_reasons_name_the_entities_that_raised_an_item_and_a_fact_they_share(kg):
    from ecr_ray.gen.reviews import item_neighbours
    from ecr_ray.rec.reasons import recommendation_reasons, shared_fact

    facts = item_neighbours(kg)
    director = kg.relation_id("director")
    film, person = next((i, e) for i in kg.item_ids.tolist() for r, e in facts.get(i, []) if r == director)
    other = next(i for i in kg.item_ids.tolist() if i != film and (director, person) in facts.get(i, []))
    assert shared_fact(kg, facts, person, film).startswith("director: ")
    assert shared_fact(kg, facts, other, film).startswith("same director, ")
    liked = kept_emotions(_probs(LABELS.index("like")), 0.1, 3)
    evidence = {"co-occurrence": torch.tensor([[0.5], [0.0], [2.0]]), "emotion-related neighbours": torch.tensor([[0.1], [0.0], [0.0]])}
    reasons = recommendation_reasons(kg, facts, [other, 5, person], [liked, [0.0] * 9, [0.0] * 9], evidence, 0, film,
                                     ["liked", None, None])
    assert [r["entity"] for r in reasons] == [person, other]  # largest first; entity 5 added nothing
    assert reasons[1]["score"] == pytest.approx(0.6) and reasons[1]["emotions"] == ["like"] and reasons[1]["stance"] == "liked"
    assert reasons[1]["text"].startswith("you liked ") and "same director" in reasons[1]["text"]
    assert reasons[0]["text"].startswith("you mentioned ") and reasons[0]["channel"] == "co-occurrence"
    # the utterance's "like" is not a stance: without one, nothing is called liked; a disliked movie is no reason
    unread = recommendation_reasons(kg, facts, [other, 5, person], [liked, [0.0] * 9, [0.0] * 9], evidence, 0, film)
    assert [r["text"].split(" ")[:2] for r in unread] == [["you", "mentioned"], ["you", "mentioned"]]
    hated = recommendation_reasons(kg, facts, [other, 5, person], [liked, [0.0] * 9, [0.0] * 9], evidence, 0, film,
                                   ["disliked", None, "no stance"], [1, 1, 0])
    assert [r["entity"] for r in hated] == [person] and hated[0]["text"].startswith("we talked about ")  # the recommender said it


def test_contexts_embedded_in_length_sorted_chunks_keep_their_order():
    from ecr_ray.emotion.classifier import by_length
    from ecr_ray.rec.context import ContextEmbedder

    texts = ["User: hi", "User: I loved Inception and Interstellar, what else by Nolan would you suggest?", "", "User: a comedy please"]
    assert by_length(texts, 3) == [[1, 3, 0], [2]]
    embedder = ContextEmbedder("minilm-l6", 64, batch_size=3)
    together = embedder.embed(texts)
    alone = np.concatenate([embedder.embed([t]) for t in texts])
    assert np.abs(together - alone).max() < 1e-5 and np.abs(together[0] - together[1]).max() > 0.1


def test_node_init_never_counts_the_held_out_dialogues(kg, data_root):
    from ecr_ray.rec.cooccurrence import ppmi_svd
    from ecr_ray.rec.examples import TrainingInputs
    from ecr_ray.rec.train import with_node_init

    trained, held_only = [5, 6, 7, 8, 9], [20, 21, 22]
    meta = model_meta(str(data_root / load_config("tiny").data.kg_dir), 0, {})
    inputs = TrainingInputs(meta, [], [], {}, [], {1: trained, 2: held_only, 3: [5, 20]})
    rcfg = RecConfig(hidden=4, node_init="ppmi-svd")
    random_rows = ppmi_svd([], kg.num_entities, 4, rcfg.train.seed)  # nothing counted: every row random
    init = with_node_init(inputs, {2}, rcfg)["tables"]["init"]
    assert np.allclose(init[[21, 22]], random_rows[[21, 22]])  # seen only in the held-out dialogue: untouched
    assert not np.allclose(init[trained], random_rows[trained])
    leaky = with_node_init(inputs, set(), rcfg)["tables"]["init"]
    assert not np.allclose(leaky[[21, 22]], random_rows[[21, 22]])
    assert with_node_init(inputs, {2}, dataclasses.replace(rcfg, node_init="random")) is meta


def test_a_movies_stance_refines_the_utterances_emotions_for_that_movie_alone():
    from ecr_ray.config import RecConfig
    from ecr_ray.rec.cooccurrence import emotional_mentions
    from ecr_ray.rec.features import entity_emotions, feeling, with_stances

    like, negative = LABELS.index("like"), LABELS.index("negative")
    said = [0.01] * len(LABELS)
    said[like], said[negative] = 0.8, 0.3  # "I loved X but hated Y": the utterance likes both
    probs = with_stances({(1, 0): said}, {(1, 0, 500): [0.05, 0.9, 0.05], (1, 7, 500): [1.0, 0.0, 0.0]})  # no utterance 7: ignored
    assert feeling(probs, 1, 0, 400) == said and (1, 7, 500) not in probs
    assert (feeling(probs, 1, 0, 500)[like], feeling(probs, 1, 0, 500)[negative]) == (0.05, 0.9)
    turn = {"conversation_id": 1, "turn": 1, "context_roles": ["seeker"], "entities": [400, 500], "entity_turns": [0, 0]}
    x, y = entity_emotions(turn, probs, RecConfig())["entity_emotions"]
    assert x[like] == 0.8 and x[negative] == 0.3 and y[like] == 0 and y[negative] == 0.9  # 0.05 falls under beta
    dialogue = {"conversation_id": 1, "utterances": [{"role": "seeker", "entities": [400, 500]}]}
    (_, bits_x), (_, bits_y) = emotional_mentions(dialogue, probs, RecConfig())
    assert bits_x & (1 << like) and not bits_y & (1 << like) and bits_y & (1 << negative)


def test_contexts_naming_a_movie_the_seeker_disliked_are_found_by_the_questionnaire():
    from ecr_ray.data.redial import FEEDBACK_DISLIKE, FEEDBACK_LIKE, FEEDBACK_NOT_SAID
    from ecr_ray.rec.ablations import disliked_context

    dialogues = [{"conversation_id": 1, "movies": [{"item": 10, "feedback": FEEDBACK_DISLIKE}, {"item": 11, "feedback": FEEDBACK_LIKE},
                                                   {"item": None, "feedback": FEEDBACK_DISLIKE}]},
                 {"conversation_id": 2, "movies": [{"item": 10, "feedback": FEEDBACK_NOT_SAID}]}]
    rows = [{"conversation_id": 1, "entities": [11]}, {"conversation_id": 1, "entities": [5, 10]}, {"conversation_id": 2, "entities": [10]}]
    assert disliked_context(rows, dialogues).tolist() == [False, True, False]  # 10 was disliked in dialogue 1 only


def test_a_named_movie_is_left_out_under_every_entity_of_its_title(kg):
    from ecr_ray.data.linking import text_key
    from ecr_ray.gen.retrieval import item_title
    from ecr_ray.rec.features import item_index, said_items

    said, index = said_items(kg), item_index(kg)
    twins = next(e for e, same in said.items() if len(same) > 1)  # the KG holds several movies of one title
    assert index[twins] in said[twins] and len({text_key(item_title(kg, int(kg.item_ids[i]))) for i in said[twins]}) == 1
    lone = next(e for e, same in said.items() if len(same) == 1)
    assert said[lone] == [index[lone]]


def test_with_the_stance_a_disliked_movies_neighbours_rank_lower_than_without_it(kg, data_root):
    """"I hated X": the items talked about with X score below what they score when X is not named at all; read
    ECR's way (the utterance's 'like' covers X) they score above. The fit only chooses how far down."""
    from ecr_ray.rec.channels import DISLIKED_GRID, fit_channels

    i0, i1 = (int(i) for i in kg.item_ids[:2])
    hated, liked = [0.0] * 9, [0.0] * 9
    hated[LABELS.index("negative")], liked[LABELS.index("like")] = 0.9, 0.9

    def score(model, entities, emotions):
        batch = {"conversation_id": [3], "entities": [entities], "entity_emotions": [emotions], "entity_by_seeker": [[1] * len(entities)],
                 "context_vec": [np.ones(8, np.float32)], "item": [0], "feedback": [1]}
        with torch.no_grad():
            return model.channels(model.inputs(batch))[0, 1].item()  # item 1 (i1): talked about with i0 in the counted dialogues

    for stance, emotion in ((True, hated), (False, liked)):
        model, _ = _model(kg, data_root, entity_stance=stance)
        rows = [{"conversation_id": 10, "entities": [5, i0], "entity_emotions": [liked, emotion], "entity_by_seeker": [1, 1],
                 "context_vec": np.ones(8, np.float32), "item": 1, "feedback": 1}]
        fitted = fit_channels(model, rows, {}, model.cfg)["weights"]["negative entity's evidence"]
        assert (fitted in DISLIKED_GRID) == stance
        without, named = score(model, [5], [liked]), score(model, [5, i0], [liked, emotion])
        assert (named < without) if stance else (named > without), (stance, named, without)
