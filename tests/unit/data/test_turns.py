from ecr_ray.data.turns import (
    NO_ITEM,
    REC_TURN_SCHEMA,
    USER_UTTERANCE_SCHEMA,
    rec_turns,
    to_table,
    user_utterances,
)

DIALOGUE = {
    "split": "dev",
    "conversation_id": 7,
    "movies": [
        {"movie_id": 1, "title": "Alien (1979)", "feedback": 1, "item": 100},
        {"movie_id": 2, "title": "Unknown (2099)", "feedback": 0, "item": None},
        {"movie_id": 3, "title": "Heat (1995)", "feedback": 2, "item": 300},
    ],
    "utterances": [
        {"role": "recommender", "text": "Hi!", "movie_ids": [], "entities": []},
        {"role": "seeker", "text": "I liked Alien (1979), horror", "movie_ids": [1], "entities": [100, 50]},
        {"role": "recommender", "text": "Try Unknown (2099) or Heat (1995)", "movie_ids": [2, 3], "entities": [300]},
        {"role": "seeker", "text": "Horror again", "movie_ids": [], "entities": [50]},
        {"role": "recommender", "text": "Heat (1995)!", "movie_ids": [3, 3], "entities": [300]},
    ],
}


def test_rec_turns():
    turns = list(rec_turns(DIALOGUE))
    assert [t["turn"] for t in turns] == [0, 2, 4]
    assert turns[0]["context"] == [] and turns[0]["entities"] == [] and turns[0]["target_items"] == []
    assert turns[1]["context"] == ["Hi!", "I liked Alien (1979), horror"]
    assert turns[1]["context_roles"] == ["recommender", "seeker"]
    assert turns[1]["entities"] == [100, 50] and turns[1]["entity_turns"] == [1, 1]
    assert turns[1]["target_movie_ids"] == [2, 3]
    assert turns[1]["target_items"] == [NO_ITEM, 300] and turns[1]["target_feedback"] == [0, 2]
    # entities ordered by latest mention, with the utterance that mentioned them last
    assert turns[2]["entities"] == [100, 300, 50] and turns[2]["entity_turns"] == [1, 2, 3]
    assert turns[2]["target_movie_ids"] == [3]  # a repeated mention is one target
    assert to_table(turns, REC_TURN_SCHEMA).num_rows == 3


def test_user_utterances():
    rows = list(user_utterances(DIALOGUE))
    assert [r["utterance_id"] for r in rows] == ["7:1", "7:3"]
    assert rows[1]["context"] == ["Hi!", "I liked Alien (1979), horror", "Try Unknown (2099) or Heat (1995)"]
    assert rows[0]["entities"] == [100, 50] and rows[0]["movie_ids"] == [1]
    table = to_table(rows, USER_UTTERANCE_SCHEMA)
    assert table.schema == USER_UTTERANCE_SCHEMA and table.column("split").to_pylist() == ["dev", "dev"]
