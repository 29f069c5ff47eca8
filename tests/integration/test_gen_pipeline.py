"""The generation stages for real on the tiny preset: reviews on Ray Data, a generator trained on
Ray Train, responses from an actor pool for the recommender's items, metrics, and the LLM judge
(SmolLM2 in-process) with its validity check."""
import json
import math
from pathlib import Path

from ecr_ray.eval.judge import CRITERIA
from tests.conftest import FAST_EMOTION, TINY_DIALOGUES, TINY_GEN, fast_config, raw_file_outside_the_tiny_pool


def test_review_funnel_and_retrieval_base(gen_run):
    from ecr_ray.data.kg import load_kg

    cfg, run_dir, summaries = gen_run
    f = run_dir.read_json("reports/reviews.json")
    assert f["reviews_read"] == 2 * cfg.gen.max_reviews
    assert f["reviews_read"] >= f["reviews_linked_to_item"] >= f["reviews_with_sentences"] >= f["reviews_kept"] > 0
    assert f["sentences"] >= f["emotional_sentences"] > 0 and f["sentences"] >= f["sentences_with_entities"] > 0
    # the share floor: a barely trained classifier (this one: 80 annotations, one epoch) still yields the most emotional quarter
    assert f["emotional_sentences"] >= cfg.gen.min_emotional_share * f["sentences"] - 1 and f["emotion_cut"] <= cfg.gen.emotion_threshold
    assert 0 < f["training_reviews"] <= cfg.gen.max_reviews and f["items_with_triples"] > 0
    sentences = run_dir.read_table("gen/sentences").num_rows
    assert sentences == f["sentences"]
    base = run_dir.read_table("gen/retrieval").to_pylist()
    kg = load_kg(cfg.data.path(cfg.data.kg_dir))
    triples = {tuple(t) for t in kg.triples.tolist()}
    assert len(base) == f["items"] and all(b["item"] in kg.item_set for b in base)
    assert sum(len(b["triples"]) for b in base) <= f["triples"]
    for b in base:
        for h, r, t in b["triples"]:
            assert h == b["item"] and ((h, r, t) in triples or (t, r, h) in triples)  # a KG edge of the item


def test_generator_trained_on_ray_train(gen_run):
    _, run_dir, summaries = gen_run
    s = summaries["gen-train"]
    assert s["train_examples"] > 0 and s["val_examples"] > 0 and s["epochs_run"] == 2
    assert math.isfinite(s["train_loss"]) and math.isfinite(s["val_loss"])
    meta = json.loads(open(run_dir.path("models/generator/generator.json")).read())
    assert meta["generator"]["method"] == "full" and meta["base"]["architecture"] == "gpt2" and meta["retrieval"] is True
    assert run_dir.exists("models/generator/model.safetensors")


def test_responses_for_the_recommenders_items_and_their_metrics(gen_run):
    from ecr_ray.data.kg import load_kg

    cfg, run_dir, summaries = gen_run
    rows = run_dir.read_table("gen/responses/ecr/pool").to_pylist()
    assert len(rows) == summaries["gen-respond-pool"]["responses"] == cfg.gen.sample_size
    kg = load_kg(cfg.data.path(cfg.data.kg_dir))
    dev = {(t["conversation_id"], t["turn"]) for t in run_dir.read_table("prepared/pool/rec_turns").to_pylist() if t["split"] == "dev"}
    for r in rows:
        assert (r["conversation_id"], r["turn"]) in dev and r["item"] in kg.item_set and r["reference"]
        assert isinstance(r["response"], str) and len(r["triples"]) <= cfg.gen.max_triples and len(r["entities"]) <= cfg.gen.max_entities
    report = run_dir.read_json("reports/gen-eval-dev.json")
    assert report["responses"] == len(rows)
    for key in ("dist-1", "dist-2", "bleu-1", "bleu-2", "bleu-4", "item_mention_rate", "hallucination_rate", "emotion_intensity"):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["dist-1"] > 0 and report["bleu-1"] > 0
    for key, (low, high) in report["intervals"].items():  # bootstrap over dialogues around the point value
        assert low <= report[key] + 1e-9 and report[key] - 1e-9 <= high, key
    # the judge, in-process: every sampled response scored from the digit distribution, none invalid
    assert report["scored"] == cfg.eval.score_sample == report["ok"] and report["sources"] == {"local": cfg.eval.score_sample}
    for c in ("emotional_intensity", "emotional_persuasiveness", "logic_persuasiveness", "informativeness", "lifelikeness"):
        assert 0 < report[f"llm_{c}"] < 9 and f"llm_{c}" in report["intervals"]
    validity = report["judge_validity"]
    assert validity["turns"] == cfg.eval.score_sample and validity["valid"] == all(
        (validity[c]["auc"] or 0) >= validity["valid_auc"] for c in CRITERIA)
    assert all(validity[c]["turns"] <= validity["turns"] and (validity[c]["auc"] is None or 0 <= validity[c]["auc"] <= 1) for c in CRITERIA)
    assert validity["logic_persuasiveness"]["turns"] == validity["turns"]  # another turn's movie: every turn has that negative
    # informativeness is read pairwise (the fixture's eval.readings): the reply against the logged one, validated that way
    assert 0 <= report["llm_pairwise_informativeness"] <= 1 and "llm_pairwise_informativeness" in report["intervals"]
    assert validity["informativeness"]["reading"] == "pairwise" and validity["informativeness"]["negative"] == "deinformed"
    assert validity["informativeness"] == {"reading": "pairwise", **validity["pairwise"]["informativeness"]}
    assert validity["lifelikeness"] == validity["score"]["lifelikeness"] and "informativeness" in validity["score"]
    assert "llm_informativeness" not in summaries["gen-eval-pool"] and "llm_pairwise_informativeness" in summaries["gen-eval-pool"]


def test_the_chat_path_is_evaluated_as_served(gen_run):
    """gen-eval-served answers the batch path's turns through the chat API's parts and decoder: a turn sent again
    through those parts gets the same item and the same reply."""
    import asyncio

    from ecr_ray.serving.components import LocalParts, answer, turn_messages

    cfg, run_dir, summaries = gen_run
    served = run_dir.read_table("gen/responses/served/pool").to_pylist()
    batch = run_dir.read_table("gen/responses/ecr/pool").to_pylist()
    assert [(r["conversation_id"], r["turn"]) for r in served] == [(r["conversation_id"], r["turn"]) for r in batch]
    report = run_dir.read_json("reports/gen-eval-served-dev.json")
    assert report["responses"] == len(served) == summaries["gen-eval-served-pool"]["responses"]
    assert summaries["gen-eval-served-pool"]["intervals"] == report["intervals"]  # the results table shows them
    assert all(0 <= report[k] <= 1 for k in ("item_mention_rate", "hallucination_rate", "responses_with_wrong_title"))
    assert report["scored"] == cfg.eval.score_sample and "trim_filter" not in report  # the chat path has no filter
    turns = {(t["conversation_id"], t["turn"]): t for t in run_dir.read_table("prepared/pool/rec_turns").to_pylist()}
    parts, row = LocalParts(run_dir), served[0]
    turn = turns[(row["conversation_id"], row["turn"])]
    found, args = asyncio.run(answer(parts, turn_messages(turn["context"], turn["context_roles"]), cfg.serve.top_k))
    assert [i["item"] for i in found["items"]] == row["recommended"] and found["items"][0]["item"] == row["item"]
    assert asyncio.run(parts.reply(*args))["text"] == row["response"]


def test_judge_check_scores_training_turns_only(gen_run):
    from ecr_ray.artifacts import read_rows
    from ecr_ray.eval.judge_check import training_turns
    from ecr_ray.pipeline import run_stages

    cfg, run_dir, _ = gen_run
    turns = training_turns(cfg, run_dir)
    split = {(t["conversation_id"], t["turn"]): t["split"] for t in read_rows(run_dir, "pool", "rec_turns")}
    assert len(turns) == cfg.eval.check_turns == len({t["conversation_id"] for t in turns})  # one turn per dialogue
    assert all(split[(t["conversation_id"], t["turn"])] == "train" and t["target_title"] and t["context"] for t in turns)
    run_stages(cfg, run_dir, only=["judge-check"])
    check = run_dir.read_json("reports/judge-check.json")
    assert check["split"] == "train" and check["turns"] == cfg.eval.check_turns and check["scorer"]["model"] == cfg.eval.scorer.model
    assert check["valid"] == all((check[c]["auc"] or 0) >= check["valid_auc"] for c in CRITERIA) and check["lifelikeness"]["negative"] == "shuffled"
    assert set(check["pairwise"]) >= set(CRITERIA) and set(check["score"]) >= set(CRITERIA)  # both readings of every criterion, to choose from
    assert check["informativeness"]["reading"] == "pairwise" and check["lifelikeness"]["reading"] == "score"


def test_scores_are_cached_and_the_comparison_is_written(gen_run):
    from ecr_ray.pipeline import run_stages

    cfg, run_dir, _ = gen_run
    parts = sorted(p.name for p in Path(run_dir.path("cache/scores")).iterdir())
    first = run_dir.read_json("reports/gen-eval-dev.json")
    again = run_stages(cfg, run_dir, only=["gen-eval-pool"], force=True)["gen-eval-pool"]
    assert sorted(p.name for p in Path(run_dir.path("cache/scores")).iterdir()) == parts  # every score came from cache/scores
    same = ("ok", "llm_lifelikeness", "llm_pairwise_informativeness")  # a pairwise reading is asked again, and reads the same
    assert {k: again[k] for k in same} == {k: first[k] for k in same}

    run_stages(cfg, run_dir, only=["gen-compare"])
    results = run_dir.read_json("reports/generation.json")
    assert set(results) == {"base model (no fine-tuning)", "fine-tuned, no retrieval", "ECR: fine-tuned + retrieval", "judge_validity"}
    validity = results.pop("judge_validity")
    assert all(m["responses"] == cfg.gen.sample_size and m["scored"] == cfg.eval.score_sample for m in results.values())
    table = run_dir.read_text("reports/generation.md")
    assert all(f"| {name} |" in table for name in results) and "| lifelikeness | score | shuffled |" in table
    assert "llm_pairwise_informativeness" in table and all(0 <= m["llm_pairwise_informativeness"] <= 1 for m in results.values())
    assert ("NOT VALID" in table) != validity["valid"]
    assert open(run_dir.path("reports/generation.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert run_dir.read_text("reports/generation-examples.md").count("### Example") == 3
    no_retrieval = run_dir.read_json("reports/generator-no-retrieval.json")
    assert no_retrieval["retrieval"] is False and no_retrieval["train_examples"] == run_dir.read_json("reports/generator.json")["train_examples"]


def test_lora_generator_on_two_workers_resumes_and_generates(gen_run, tmp_path):
    """The offline default: LoRA on SmolLM2-135M-Instruct, DDP over two Ray Train workers."""
    from ecr_ray.config import DecodingConfig
    from ecr_ray.gen.generate import ResponseGenerator
    from ecr_ray.gen.train import fit_generator, training_examples
    from ecr_ray.rundir import RunDir

    cfg, run_dir, _ = gen_run
    lora = fast_config(*TINY_GEN, "gen.generator.method=lora", "gen.generator.model=smollm2-135m-instruct",
                       "gen.generator.max_length=96", "gen.generator.response_tokens=32", "gen.generator.max_examples=8",
                       "gen.generator.train.epochs=1", "gen.generator.train.batch_size=2", "gen.generator.train.num_workers=2",
                       "gen.generator.train.cpus_per_worker=0.5", "gen.generator.train.lr=1.0e-3")
    train, val, _ = training_examples(lora, run_dir, retrieval=True)
    assert len(train) == 8
    out = RunDir(tmp_path)
    first = fit_generator(lora, "lora", train, val[:2], out, {"retrieval": True})
    assert first["epochs_run"] == 1 and first["steps"] == 2  # 8 examples, 2 workers, batches of 2
    assert out.exists("models/lora/adapter_model.safetensors") and not out.exists("models/lora/model.safetensors")
    again = fit_generator(lora, "lora", train, val[:2], out, {"retrieval": True})  # the same run: resumed, nothing left to train
    assert again["epochs_run"] == 1 and len(list((tmp_path / "train").iterdir())) == 1
    generator = ResponseGenerator(out.path("models/lora"), lora.gen.generator, DecodingConfig(max_new_tokens=8), retrieval=True)
    responses, truncated = generator.respond([{"context": "User: I love space adventures", "title": "Star Wars",
                                               "knowledge": {"entities": ["Harrison Ford"], "triples": [["Star Wars", "starring", "Harrison Ford"]]}}])
    assert len(responses) == 1 and responses[0].strip()
    assert truncated == [True]  # a 64-token prompt budget is below this prompt's length: cut by rule, and reported


def test_evaluate_generates_for_a_raw_redial_file(gen_run, data_root, tmp_path):
    from ecr_ray.cli import main

    cfg, run_dir, _ = gen_run
    test_file = raw_file_outside_the_tiny_pool(cfg, data_root, tmp_path, 20)
    sets = [f"data.max_dialogues={TINY_DIALOGUES}", *FAST_EMOTION, *TINY_GEN]
    assert main(["evaluate", "--config", "tiny", "--run-dir", run_dir.root, *[a for s in sets for a in ("--set", s)],
                 "--split-file", f"test={test_file}"]) == 0
    assert run_dir.exists("emotion/stances/test")  # rec.entity_stance: the recommender reads the test split's stances too
    responses = run_dir.read_table("gen/responses/ecr/test").to_pylist()
    turns = {(t["conversation_id"], t["turn"]) for t in run_dir.read_table("prepared/test/rec_turns").to_pylist()}
    assert 0 < len(responses) <= cfg.gen.sample_size and all((r["conversation_id"], r["turn"]) in turns for r in responses)
    report = run_dir.read_json("reports/gen-eval-test.json")
    assert report["responses"] == len(responses) and report["scored"] == min(cfg.eval.score_sample, len(responses))
