"""The judge's two readings (a 0-9 score alone, or which of two replies is better) and the choice between them
per criterion, on the packaged SmolLM2 judge."""
import json

import pytest
import torch

from ecr_ray.config import ConfigError, load_config
from ecr_ray.eval.judge import CRITERIA, LocalJudge
from ecr_ray.eval.judge_validity import in_use, pairwise_validity, readings

CONTEXT, TITLE = "User: I loved Inception, anything like it?", "Interstellar"
REAL, OTHER = "Watch Interstellar: Nolan's space epic, I cried at the end.", "You could watch it."


@pytest.fixture(scope="module")
def judge():
    judge = LocalJudge("smollm2-135m-instruct")
    judge.model.float()  # bf16 where native: a cached and a whole pass would differ by its rounding, not by the cache
    return judge


def test_pairwise_reads_both_orders_with_the_criteria_asked_together(judge):
    p = judge.prefer(CONTEXT, TITLE, REAL, OTHER, ["informativeness", "lifelikeness"])
    q = judge.prefer(CONTEXT, TITLE, OTHER, REAL, ["informativeness", "lifelikeness"])
    assert list(p) == ["informativeness", "lifelikeness"] and all(0.0 < v < 1.0 for v in p.values())
    assert all(abs(p[c] + q[c] - 1.0) < 1e-4 for c in p)  # both orders, averaged: swapping the replies mirrors it
    # the batched questions on the cached pair read as each whole chat in one pass
    prefix, suffixes = judge.pair_parts(CONTEXT, TITLE, REAL, OTHER)
    with torch.inference_mode():
        whole = torch.softmax(judge.model(input_ids=torch.tensor([prefix + suffixes["informativeness"]])).logits[0, -1].float(), -1)
    judge.last = None
    batched = torch.softmax(judge.next_logits(prefix, [suffixes["informativeness"], suffixes["lifelikeness"]])[0].float(), -1)
    assert torch.allclose(whole, batched, atol=1e-4)


def test_pairwise_validity_asks_each_criterion_against_its_own_negative(judge):
    sample = [{"conversation_id": c, "turn": 1} for c in (1, 2)]
    ask = lambda response, t=TITLE: {"context": CONTEXT, "title": t, "response": response}  # noqa: E731
    asked = {"real": [ask(REAL), ask("Sure, why not.")], "deinformed": [ask("Watch it: its space epic, I cried at the end."), None],
             "other movie": [ask(REAL, "Titanic"), ask("Sure, why not.", "Titanic")], "shuffled": [ask("epic, Watch space Interstellar:"), None],
             "unemotional": [ask("Watch Interstellar: Nolan's space epic."), None]}
    found = pairwise_validity(load_config("tiny"), sample, asked, judge)
    assert found["negatives"]["logic_persuasiveness"] == "title swapped" and found["reading"] == "pairwise"
    # the second turn has no negative but "other movie", and its reply does not name the title: it sits every criterion out
    assert all(found[c]["turns"] == 1 and found[c]["auc"] in (0.0, 0.5, 1.0) and found[c]["reading"] == "pairwise" for c in CRITERIA)
    some = pairwise_validity(load_config("tiny"), sample, asked, judge, ["informativeness"])
    assert set(some) & set(CRITERIA) == {"informativeness"} and some["informativeness"] == found["informativeness"]


def test_the_validity_in_use_takes_each_criterion_from_its_reading():
    cfg = load_config("tiny", ["eval.readings={informativeness: pairwise}"])
    entry = lambda auc, how: {"negative": "x", "reading": how, "turns": 3, "auc": auc, "interval": [auc - 0.1, auc]}  # noqa: E731
    by_score = {"turns": 3, "valid_auc": 0.75, "negatives": {}, "split": "train", **{c: entry(0.8, "score") for c in CRITERIA}}
    by_score["informativeness"] = entry(0.6, "score")
    pairwise = {"turns": 3, "valid_auc": 0.75, "reading": "pairwise", "informativeness": entry(0.9, "pairwise")}
    used = in_use(cfg, by_score, pairwise)
    assert used["valid"] and used["informativeness"]["auc"] == 0.9 and used["informativeness"]["reading"] == "pairwise"
    assert used["readings"]["informativeness"] == "pairwise" and used["score"] is by_score and used["split"] == "train"
    assert not in_use(load_config("tiny"), by_score, pairwise)["valid"]  # read by score, informativeness fails
    with pytest.raises(ConfigError, match="'score' or 'pairwise'"):
        readings(load_config("tiny", ["eval.readings={informativeness: vote}"]))
    with pytest.raises(ConfigError, match="in-process"):
        readings(load_config("tiny", ["eval.readings={informativeness: pairwise}", "eval.scorer.base_url=http://localhost:1/v1"]))


def test_the_judge_validity_record_holds_each_criterion_on_both_splits(tmp_path):
    from ecr_ray.rundir import RunDir
    from ecr_ray.run_report import judge_validity_record, validity_lines, validity_verdict

    run_dir = RunDir(tmp_path)
    entry = lambda auc, how: {"negative": "x", "reading": how, "turns": 4, "auc": auc, "interval": [round(auc - 0.1, 2), round(auc + 0.05, 2)]}  # noqa: E731
    check = {"scorer": {"model": "judge-1"}, **{c: entry(0.8, "score") for c in CRITERIA}, "informativeness": entry(0.85, "pairwise")}
    served = {"scorer": {"model": "judge-1"}, "judge_validity": {c: entry(0.7, "score") for c in CRITERIA} | {"informativeness": entry(0.9, "pairwise")}}
    assert judge_validity_record(run_dir) == {}
    run_dir.write_json("reports/judge-check.json", check)
    run_dir.write_json("reports/gen-eval-served-dev.json", served)
    record = judge_validity_record(run_dir)
    assert set(record) == set(CRITERIA) and json.loads(json.dumps(record)) == record
    assert record["informativeness"] == {"judge": "judge-1", "reading": "pairwise", "train": {"auc": 0.85, "low": 0.75, "high": 0.9, "turns": 4},
                                         "dev": {"auc": 0.9, "low": 0.8, "high": 0.95, "turns": 4}}
    assert record["lifelikeness"]["train"]["auc"] == 0.8 and record["lifelikeness"]["dev"]["auc"] == 0.7
    served["judge_validity"]["lifelikeness"]["reading"] = "pairwise"  # read another way on dev: its training figure does not apply
    run_dir.write_json("reports/gen-eval-served-dev.json", served)
    assert "train" not in judge_validity_record(run_dir)["lifelikeness"]
    assert "| lifelikeness | pairwise | not checked | 0.70 [0.60, 0.75] (4) |" in validity_lines(judge_validity_record(run_dir))
    # the line under the README's figures: which criteria fail, on which split (dev 0.7 < 0.75; lifelikeness unchecked on train)
    verdict = validity_verdict(judge_validity_record(run_dir))
    assert "NOT valid for emotional intensity (dev)," in verdict and "lifelikeness (train/dev)" in verdict and "informativeness" not in verdict
    assert "can be read" in validity_verdict({c: {"judge": "j", "train": {"auc": 0.8}, "dev": {"auc": 0.9}} for c in CRITERIA})
