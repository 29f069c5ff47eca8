"""Movie cards: the year, genres, director and a one-line plot of each KG item, from the ReDial movie
metadata (`data.movie_info_file`, iEvaLM's id2info.json: movieId -> {name, genre, plot, director,
...}), its titles linked to KG items the way ReDial's own mentions are (`MovieLinker`)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ecr_ray.data.titles import MovieLinker, split_year

PLOT_CHARS = 200  # a card's plot is its first sentence, cut to this
# a sentence ends at . ! ? and a space, but not after an initial or an abbreviation ("a U.S. Marshal", "Dr. No")
SENTENCE_END = re.compile(r"(?<![A-Z]\.[A-Z]\.)(?<![\s(][A-Z]\.)(?<!Mr\.)(?<!Ms\.)(?<!Dr\.)(?<!St\.)(?<!Mrs\.)(?<=[.!?])\s")


def one_line(plot: str | None) -> str | None:
    """The first sentence of a plot, at most PLOT_CHARS characters (None when there is none)."""
    if not plot or not plot.strip():
        return None
    first = SENTENCE_END.split(plot.strip(), maxsplit=1)[0]
    return first if len(first) <= PLOT_CHARS else first[: PLOT_CHARS - 1].rsplit(" ", 1)[0] + "…"


def movie_cards(kg, path: str | Path) -> dict[int, dict]:
    """KG item -> {year, genres, director, plot}; a movie that links to no item, or to an item an
    earlier entry already took, is left out."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"movie metadata {path} not found (data.movie_info_file; set it to null to serve without movie cards)")
    linker, cards = MovieLinker(kg), {}
    for info in json.loads(path.read_text()).values():
        item = linker.link(info.get("name") or "")
        if item is None or item in cards:
            continue
        cards[item] = {"year": split_year(info["name"])[1], "genres": list(info.get("genre") or []),
                       "director": ", ".join(info.get("director") or []) or None, "plot": one_line(info.get("plot"))}
    return cards
