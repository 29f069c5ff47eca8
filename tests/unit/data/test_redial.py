import json

import pytest

from ecr_ray.config import load_config
from ecr_ray.data.prepare import RejectsExceeded, read_group
from ecr_ray.data.redial import load_movie_catalogue, parse_dialogue, read_dialogues


@pytest.fixture(scope="module")
def catalogue(data_root):
    return load_movie_catalogue(data_root / "redial/raw")


@pytest.fixture(scope="module")
def pool_lines(data_root):
    return (data_root / "redial/raw/train_split_pool_dedup.jsonl").read_bytes().splitlines()


def test_reads_the_real_pool(data_root, catalogue):
    dialogues, rejects = read_dialogues(data_root / "redial/raw/train_split_pool_dedup.jsonl", catalogue)
    assert len(dialogues) == 4101 and len({d["conversation_id"] for d in dialogues}) == 4101
    assert [r["reason"] for r in rejects] == ["empty text"] * 21  # real empty messages, dialogues kept
    assert all(r["message"] >= 0 and r["line"] > 0 for r in rejects)
    first = next(d for d in dialogues if d["conversation_id"] == 395)
    assert first["line"] == 1
    # consecutive messages of one speaker are merged; @ids become titles, ids are kept
    assert first["utterances"][2] == {
        "role": "seeker",
        "text": "Then you would like The Godfather if you haven't seen it. You like Sci Fi stuff like Star Wars ?",
        "movie_ids": [114851, 204292],
    }
    assert first["utterances"][1]["role"] == "recommender"
    assert not any("@" in u["text"] and any(c.isdigit() for c in u["text"].split("@")[1][:1]) for d in dialogues for u in d["utterances"])


def test_feedback_is_the_seekers_questionnaire_only(pool_lines, catalogue):
    """RT@n and AUC count what the user said (ECR's protocol), never the recommender's guess."""
    record = json.loads(pool_lines[0])
    record["initiatorQuestions"] = {"196336": {"liked": 0}, "204292": {"liked": 1}}
    record["respondentQuestions"] = {"196336": {"liked": 1}, "114851": {"liked": 1}, "204292": {"liked": 0}}
    dialogue, _ = parse_dialogue(json.dumps(record).encode(), catalogue)
    feedback = {m["movie_id"]: m["feedback"] for m in dialogue["movies"]}
    assert feedback[196336] == 0 and feedback[204292] == 1  # the seeker's answers
    assert feedback[114851] == 2  # only the recommender answered: not said
    assert feedback[143189] == 2  # nobody answered: not said


def _bad_file(tmp_path, pool_lines) -> tuple:
    good = json.loads(pool_lines[0])
    missing = dict(good)
    del missing["messages"]
    wrong_type = {**good, "initiatorWorkerId": "two"}
    unknown_movie = json.loads(pool_lines[1])
    unknown_movie["messages"][0]["text"] += " and @999999999"
    empty_text = json.loads(pool_lines[2])
    empty_text["messages"][1]["text"] = "   "
    lines = [
        pool_lines[0],  # 1 valid
        pool_lines[3][:200],  # 2 truncated JSON
        json.dumps(missing).encode(),  # 3
        json.dumps(wrong_type).encode(),  # 4
        json.dumps(unknown_movie).encode(),  # 5
        json.dumps(empty_text).encode(),  # 6 kept, one message quarantined
        pool_lines[4].replace(b"Hi", b"H\xff", 1),  # 7 not UTF-8
        b'["a list"]',  # 8
        pool_lines[5],  # 9 valid
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, [json.loads(line) for line in (pool_lines[0], pool_lines[5])]


def test_bad_input_is_quarantined_with_file_line_reason(tmp_path, pool_lines, catalogue):
    path, valid = _bad_file(tmp_path, pool_lines)
    dialogues, rejects = read_dialogues(path, catalogue)
    assert [d["line"] for d in dialogues] == [1, 6, 9]  # nothing valid dropped
    reasons = {r["line"]: r["reason"] for r in rejects}
    assert reasons[2].startswith("truncated or invalid JSON")
    assert reasons[3] == "missing field messages"
    assert reasons[4] == "field initiatorWorkerId should be int, got str"
    assert reasons[5] == "messages[0] mentions unknown movie id @999999999"
    assert reasons[6] == "empty text"
    assert reasons[7].startswith("not UTF-8")
    assert reasons[8] == "expected a JSON object, got list"
    assert all(r["file"] == str(path) for r in rejects)
    assert next(r for r in rejects if r["line"] == 6)["message"] == 1
    assert next(r for r in rejects if r["line"] == 3)["conversation_id"] == int(valid[0]["conversationId"])


def test_too_many_rejects_fail_the_stage_naming_the_setting(tmp_path, pool_lines):
    path, _ = _bad_file(tmp_path, pool_lines)
    with pytest.raises(RejectsExceeded, match=r"6 of 9 lines quarantined .* data.max_reject_fraction=0.05"):
        read_group(load_config("tiny"), "test", path)
    dialogues, _ = read_group(load_config("tiny", ["data.max_reject_fraction=0.7"]), "test", path)
    assert [d["split"] for d in dialogues] == ["test"] * 3
