"""ReDial movie titles -> KG item entities.

A ReDial title is 'Scarface  (1983)'; the KG item is 'Scarface (1983 film)', 'Star Wars (film)',
'The Lion King' or 'Once Upon a Time in China (film series)'. Titles and item names are both
normalised (accents, case, punctuation, '&', a leading article), then a candidate is chosen by year.
"""
from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from typing import NamedTuple
from urllib.parse import unquote

from ecr_ray.data.kg import KnowledgeGraph, split_qualifier

_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")
_QUAL_YEAR = re.compile(r"\b(\d{4})\b")
_ARTICLES = ("the ", "a ", "an ")
_ROMAN = {"ii": "2", "iii": "3", "iv": "4", "v": "5", "vi": "6", "vii": "7", "viii": "8"}
# items whose qualifier ends in one of these are not screen works and never link to a film title
_NOT_A_FILM = {"song", "album", "soundtrack", "novel", "book", "band", "single", "EP", "comics", "game", "play"}


def normalize(text: str) -> str:
    """Case-, accent-, punctuation- and article-insensitive form of a title or name."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = text.lower().replace("&", " and ").replace("'", "")
    text = re.sub(r"[^a-z0-9]+", " ", text).strip()
    if text.endswith(" the"):
        text = "the " + text[:-4]
    for article in _ARTICLES:
        if text.startswith(article) and len(text) > len(article):
            text = text[len(article):]
            break
    return " ".join(_ROMAN.get(w, w) for w in text.split())


def split_year(title: str) -> tuple[str, int | None]:
    """'Scarface  (1983)' -> ('Scarface', 1983); 'Star Wars' -> ('Star Wars', None)."""
    m = _YEAR.match(title.strip())
    return (m.group(1).strip(), int(m.group(2))) if m else (title.strip(), None)


def display_title(title: str) -> str:
    """One spacing for a ReDial title: 'Scarface  (1983)' -> 'Scarface (1983)'."""
    base, year = split_year(title)
    return f"{base} ({year})" if year else base


class MovieLinker:
    """Links ReDial titles to KG item ids; `link` returns None when no item fits.

    With a year: the item of that year (or one off: release vs festival years differ), else an
    undated item. Without one: an undated item. Undated candidates are ranked by exact spelling,
    then by qualifier (film before none before series), then by KG degree as a popularity proxy.
    Items of another year, and songs, albums or novels, are never taken for a film title.
    """

    def __init__(self, kg: KnowledgeGraph):
        degree = kg.degree
        self._index: dict[str, list[_Candidate]] = defaultdict(list)
        for item in kg.item_ids.tolist():
            base, qualifier = split_qualifier(kg.names[item])
            if qualifier and qualifier.split()[-1] in _NOT_A_FILM:
                continue
            year = _QUAL_YEAR.search(qualifier or "")
            cand = _Candidate(item, int(year.group(1)) if year else None, qualifier, base.lower(), int(degree[item]))
            self._index[normalize(base)].append(cand)

    def link(self, title: str) -> int | None:
        base, year = split_year(unquote(title))
        cands = self._index.get(normalize(base), ())
        if year is not None:
            for tolerance in (0, 1):
                dated = [c for c in cands if c.year is not None and abs(c.year - year) <= tolerance]
                if dated:
                    return max(dated, key=lambda c: c.degree).item
        undated = [c for c in cands if c.year is None]
        if undated:
            best = min(undated, key=lambda c: (c.spelling != base.lower(), _qualifier_rank(c.qualifier), -c.degree))
            return best.item
        if year is None and cands:
            return max(cands, key=lambda c: c.degree).item
        return None


class _Candidate(NamedTuple):
    item: int
    year: int | None
    qualifier: str | None
    spelling: str  # the base name, lower-cased but not normalised
    degree: int


def _qualifier_rank(qualifier: str | None) -> int:
    order = ("film", None, "film series", "franchise")
    return order.index(qualifier) if qualifier in order else len(order)
