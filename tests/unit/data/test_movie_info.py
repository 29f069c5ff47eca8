import pytest

from ecr_ray.config import load_config
from ecr_ray.data.kg import load_kg
from ecr_ray.data.movie_info import PLOT_CHARS, movie_cards, one_line
from ecr_ray.data.titles import MovieLinker


def test_cards_come_from_the_movie_metadata_linked_to_kg_items(data_root):
    cfg = load_config("tiny")
    kg = load_kg(data_root / cfg.data.kg_dir)
    cards = movie_cards(kg, data_root / cfg.data.movie_info_file)
    assert len(cards) > 0.9 * len(kg.item_ids) and set(cards) <= kg.item_set
    inception = cards[MovieLinker(kg).link("Inception (2010)")]
    assert inception["year"] == 2010 and inception["director"] == "Christopher Nolan" and "sci-fi" in inception["genres"]
    assert inception["plot"].startswith("A thief who steals corporate secrets") and len(inception["plot"]) <= PLOT_CHARS
    with pytest.raises(FileNotFoundError, match="data.movie_info_file"):
        movie_cards(kg, data_root / "no-such-file.json")


def test_a_plot_is_its_first_sentence_cut_at_a_word():
    assert one_line("One man. Then another.") == "One man."
    assert one_line("In 1954, a U.S. Marshal investigates. He finds more.") == "In 1954, a U.S. Marshal investigates."
    assert one_line("Agent J. Smith meets Dr. No on St. Kitts. Then Mrs. Bond.") == "Agent J. Smith meets Dr. No on St. Kitts."
    assert one_line("  ") is None and one_line(None) is None
    long = one_line("word " * 100)
    assert long.endswith("…") and len(long) <= PLOT_CHARS and "wor…" not in long
