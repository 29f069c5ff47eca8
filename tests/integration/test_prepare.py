"""The prepare stages on a real local Ray (session fixture) over real ReDial dialogues."""
import json

import pyarrow.dataset as pads
import pytest

from ecr_ray.config import load_config
from ecr_ray.data.linking import DialogueLinker
from ecr_ray.data.prepare import POOL, prepared, read_group, split_of
from ecr_ray.data.turns import (
    DIALOGUE_SCHEMA,
    REC_TURN_SCHEMA,
    USER_UTTERANCE_SCHEMA,
    rec_turns,
)
from ecr_ray.data.redial import conversation_ids
from ecr_ray.pipeline import StagesFailed, run_stages
from ecr_ray.rundir import RunDir

from tests.conftest import PREPARE_STAGES, TINY_DIALOGUES


def _table(run_dir, group, artifact):
    return pads.dataset(run_dir.path(prepared(group, artifact)), filesystem=run_dir.fs, format="parquet").to_table()


def test_artifacts_have_explicit_schemas(prepared_run):
    _, run_dir, summaries = prepared_run
    for artifact, schema in (("dialogues", DIALOGUE_SCHEMA), ("rec_turns", REC_TURN_SCHEMA), ("user_utterances", USER_UTTERANCE_SCHEMA)):
        table = _table(run_dir, POOL, artifact)
        assert table.schema.remove_metadata() == schema.remove_metadata(), artifact
    summary = summaries[f"prepare-{POOL}"]
    assert sum(summary["dialogues"].values()) == TINY_DIALOGUES
    assert summary["rec_turns"] == _table(run_dir, POOL, "rec_turns").num_rows > TINY_DIALOGUES
    assert summary["user_utterances"] == _table(run_dir, POOL, "user_utterances").num_rows
    assert summary["movie_mentions_linked"] > 0.95


def test_ray_output_equals_the_plain_path(prepared_run):
    """Ray Data (actors, batches, parquet) changes nothing: same rows as a plain loop."""
    cfg, run_dir, _ = prepared_run
    dialogues, _ = read_group(cfg, POOL, cfg.data.path(cfg.data.pool_file))
    linker = DialogueLinker(str(cfg.data.path(cfg.data.kg_dir)))
    expected = sorted((json.dumps(t, sort_keys=True) for d in dialogues for t in rec_turns(linker.link_dialogue(d))))
    got = sorted(json.dumps(r, sort_keys=True) for r in _table(run_dir, POOL, "rec_turns").to_pylist())
    assert got == expected


def test_splits_are_deterministic_and_disjoint(prepared_run, data_root):
    cfg, run_dir, _ = prepared_run
    rows = _table(run_dir, POOL, "dialogues").select(["conversation_id", "split"]).to_pylist()
    by_split = {s: {r["conversation_id"] for r in rows if r["split"] == s} for s in ("train", "dev")}
    assert by_split["train"] and by_split["dev"] and not by_split["train"] & by_split["dev"]
    assert all(split_of(r["conversation_id"], cfg.data.dev_fraction, 0) == r["split"] for r in rows)
    # on the whole pool the dev share is close to dev_fraction, and another seed gives another split
    full, _ = read_group(load_config("cpu"), POOL, cfg.data.path(cfg.data.pool_file))
    dev = sum(d["split"] == "dev" for d in full) / len(full)
    assert abs(dev - 0.1) < 0.015
    assert [split_of(d["conversation_id"], 0.1, 1) for d in full] != [d["split"] for d in full]


def test_rerun_is_skipped_and_a_config_change_reruns(ray_local, tmp_path, tiny_cfg, data_root):
    run_dir = RunDir(tmp_path / "run")
    first = run_stages(tiny_cfg, run_dir, only=PREPARE_STAGES)
    assert not any(s.get("skipped") for s in first.values())
    again = run_stages(tiny_cfg, run_dir, only=PREPARE_STAGES)
    assert all(s["skipped"] for s in again.values())

    # a named split runs alone; the pool stays as it was
    sub = (data_root / "redial/raw/train_split_subsets/kepler_train_data.jsonl").read_bytes().splitlines()[:40]
    test_file = tmp_path / "test_data.jsonl"
    test_file.write_bytes(b"\n".join(sub + [b'{"conversationId": "1", "messages": [']) + b"\n")
    with_test = load_config("tiny", ["data.max_dialogues=120", f"data.split_files.test={test_file}"])
    pool = sorted(conversation_ids(data_root / with_test.data.pool_file))[:120]
    shared = sum(int(json.loads(line)["conversationId"]) in pool for line in sub)
    assert shared > 0  # kepler's dialogues come from the pool file
    with pytest.raises(StagesFailed, match=f"split 'test' shares {shared} dialogues with the training pool.*conversationId"):
        run_stages(with_test, run_dir, only=PREPARE_STAGES)  # refused: evaluating on training dialogues
    with_test = load_config("tiny", ["data.max_dialogues=120", f"data.split_files.test={test_file}", "data.allow_pool_overlap=true"])
    third = run_stages(with_test, run_dir, only=PREPARE_STAGES)
    assert third["prepare-pool"]["skipped"] and third["linking-report"]["skipped"]
    assert not third["prepare-test"].get("skipped") and third["prepare-test"]["dialogues"] == {"test": 40}
    assert third["prepare-test"]["overlap_with_pool"] == shared  # allowed explicitly: still reported
    rejects = run_dir.read_text(prepared("test", "rejects.jsonl")).splitlines()
    assert json.loads(rejects[0])["line"] == 41 and json.loads(rejects[0])["conversation_id"] == 1
    assert set(_table(run_dir, "test", "rec_turns").column("split").to_pylist()) == {"test"}

    # a changed knob re-runs the pool and what needs it
    changed = load_config("tiny", ["data.max_dialogues=120", "data.dev_fraction=0.5"])
    fourth = run_stages(changed, run_dir, only=PREPARE_STAGES)
    assert not fourth["prepare-pool"].get("skipped") and not fourth["linking-report"].get("skipped")
    assert fourth["prepare-pool"]["dialogues"] != first["prepare-pool"]["dialogues"]


def test_a_crash_leaves_the_stage_to_rerun(ray_local, tmp_path, tiny_cfg):
    run_dir = RunDir(tmp_path / "run")
    run_stages(tiny_cfg, run_dir, only=["prepare"])
    run_dir.delete(prepared(POOL, "rec_turns"))  # an output lost after the manifest was written
    assert not run_stages(tiny_cfg, run_dir, only=["prepare"])["prepare-pool"].get("skipped")
    with pytest.raises(ValueError, match="unknown stage 'train'"):
        run_stages(tiny_cfg, run_dir, only=["train"])


def test_too_many_rejects_stop_the_run(ray_local, tmp_path, tiny_cfg):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversationId": "1"}\n{not json\n')
    cfg = load_config("tiny", ["data.max_dialogues=120", f"data.split_files.test={bad}"])
    with pytest.raises(StagesFailed, match="prepare-test: RejectsExceeded: .*2 of 2 lines quarantined"):
        run_stages(cfg, RunDir(tmp_path / "run"), only=["prepare-test"])
