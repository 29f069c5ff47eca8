"""Entity linking: movie mentions -> KG items by title, other KG entities by name in the text.

`DialogueLinker` is the plain callable that a Ray Data stage runs over batches of dialogues
(it builds its indexes once, in __init__); both linkers are usable without Ray.
"""
from __future__ import annotations

import re
import unicodedata
from collections import defaultdict

import pyarrow as pa

from ecr_ray.data.kg import KnowledgeGraph, load_kg, split_qualifier
from ecr_ray.data.titles import MovieLinker
from ecr_ray.data.turns import DIALOGUE_SCHEMA, to_table

# Single words that are DBpedia entities but in chat are nearly always plain English.
_COMMON_WORDS = frozenset(
    """a about after again all also always am an and any are as at away back be because been before
    being best better big both but by came can come could day did do does done down even ever every
    few find first for from funny get go going good got great had has have he her here him his how i
    if in into is it its just kind know last later life like little long look lot love made make man
    many me might more most movie movies much my never new nice no not now of off ok okay old on once
    one only or other our out over people really right said same saw say see seen she should show so
    some something still such sure take than thank thanks that the their them then there these they
    thing things think this those thought through time to too two up us very want was watch way we
    well were what when where which while who why will with would yeah yes yet you your
    hi hello bye home star stars top true real live alive war wars fun dark black white red blue
    green gold world music family kids""".split()
)
_GENRE_SUFFIXES = (" film", " films", " movie", " movies")
_TITLE_SMALL = frozenset("a an and as at by for from in of on or the to with".split())  # lower case inside a title


def words(text: str) -> list[str]:
    """The ASCII words of a text, case kept."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9]+", " ", text.replace("'", "")).split()


def text_key(text: str) -> str:
    """Lower-case ASCII words separated by single spaces (articles kept: 'The Who' is not 'who')."""
    return " ".join(words(text)).lower()


class TextEntityLinker:
    """Greedy longest-match of KG entity names (items excluded unless `items`: in ReDial movies come
    from @mentions; a chat user types titles).

    Aliases: each name without its '(qualifier)'; for genres (tails of the 'genre' relation) also
    the name without 'film' ('Horror film' -> 'horror') and its plural. A one-word alias that is a
    common English word is never matched; when entities share an alias the best connected wins.
    A one-word movie title matches only when capitalised ('I loved Inception', not the film 'Loved').
    With `proper`, for well-formed text (generated replies, reviews), a name other than a film genre's
    ('Horror film': 'horror') matches only in title case ('The End', not 'at the end'; 'Free', not 'free to
    watch'; 'Film', not 'a film'): the generic words a chat linker must accept are then not read as claims.
    """

    def __init__(self, kg: KnowledgeGraph, max_words: int = 6, items: bool = False, proper: bool = False):
        degree = kg.degree
        genres = set(kg.triples[kg.triples[:, 1] == kg.relation_id("genre"), 2].tolist())
        candidates: dict[str, list[int]] = defaultdict(list)
        for entity, name in enumerate(kg.names):
            if entity in kg.item_set and not items:
                continue
            base = text_key(split_qualifier(name)[0])
            aliases = {base}
            if entity in genres:
                for suffix in _GENRE_SUFFIXES:
                    if base.endswith(suffix):
                        stem = base[: -len(suffix)]
                        aliases |= {stem, stem[:-1] + "ies" if stem.endswith("y") else stem + "s"}
            for alias in aliases:
                words = alias.split()
                if words and len(words) <= max_words and not (len(words) == 1 and (alias in _COMMON_WORDS or len(alias) < 3)):
                    candidates[alias].append(entity)
        self._alias = {a: max(es, key=lambda e: (degree[e], -e)) for a, es in candidates.items()}
        self._cased = {a for a, e in self._alias.items() if e in kg.item_set and " " not in a}
        self._max_words, self._proper = max_words, proper
        self._film_genres = {e for e in genres if text_key(split_qualifier(kg.names[e])[0]).endswith(_GENRE_SUFFIXES)}  # 'horror'; not the music genre 'son'

    def link(self, text: str) -> list[int]:
        """Entity ids named in the text, in order of appearance (repeats kept once)."""
        cased = words(text)
        keys = [w.lower() for w in cased]
        found: list[int] = []
        i = 0
        while i < len(keys):
            for n in range(min(self._max_words, len(keys) - i), 0, -1):
                alias = " ".join(keys[i : i + n])
                entity = self._alias.get(alias)
                if entity is not None and (alias not in self._cased or cased[i][0].isupper()) and (
                        not self._proper or entity in self._film_genres or _title_case(cased[i : i + n])):
                    if entity not in found:
                        found.append(entity)
                    i += n
                    break
            else:
                i += 1
        return found


def _title_case(words: list[str]) -> bool:
    """'The Silence of the Lambs', 'Tom Hanks': the first word and every word not in _TITLE_SMALL capitalised."""
    return all(w[0].isupper() or w[0].isdigit() or (k and w.lower() in _TITLE_SMALL) for k, w in enumerate(words))


class DialogueLinker:
    """Ray Data UDF: adds `item` to each movie and `entities` (text entities) to each utterance.

    An utterance's entities are its movies' items (in mention order) followed by the entities named
    in its text; movie titles are not searched as text, they are linked by id.
    """

    def __init__(self, kg_dir: str):
        kg = load_kg(kg_dir)
        self._movies = MovieLinker(kg)
        self._text = TextEntityLinker(kg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return to_table((self.link_dialogue(d) for d in batch.to_pylist()), DIALOGUE_SCHEMA)

    def link_dialogue(self, dialogue: dict) -> dict:
        movies = self.link_movies(dialogue["movies"])
        return {**dialogue, "movies": movies, "utterances": self.link_utterances(dialogue["utterances"], movies)}

    def link_movies(self, movies) -> list[dict]:
        return [{**m, "item": self._movies.link(m["title"]) if m["title"] else None} for m in movies]

    def link_utterances(self, utterances, movies) -> list[dict]:
        items = {m["movie_id"]: m["item"] for m in movies}
        titles = sorted((m["title"] for m in movies if m["title"]), key=len, reverse=True)
        # titles were substituted for @ids: link the text between them, not the titles as words
        title_pattern = re.compile("|".join(map(re.escape, titles))) if titles else None
        out = []
        for u in utterances:
            entities = [items[m] for m in u["movie_ids"] if items.get(m) is not None]
            segments = title_pattern.split(u["text"]) if title_pattern else [u["text"]]
            entities += [e for segment in segments for e in self._text.link(segment)]
            out.append({**u, "movie_ids": list(u["movie_ids"]), "entities": list(dict.fromkeys(entities))})
        return out


def mention_coverage(dialogues) -> dict:
    """How many movie-mention occurrences of linked dialogues reached a KG item."""
    total = linked = 0
    for d in dialogues:
        items = {m["movie_id"]: m["item"] for m in d["movies"]}
        for u in d["utterances"]:
            total += len(u["movie_ids"])
            linked += sum(items.get(m) is not None for m in u["movie_ids"])
    return {"dialogues": len(dialogues), "mentions": total, "linked": linked, "linked_share": round(linked / max(total, 1), 4)}
