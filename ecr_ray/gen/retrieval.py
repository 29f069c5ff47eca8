"""Knowledge for a prompt: an item's review entities and KG triples, by name.

An item with reviews gets its reviews' entities (most frequent first) and the triples that join it
to them; an item without reviews, or without enough triples, falls back to its own KG triples.
"""
from __future__ import annotations

from ecr_ray.artifacts import read_retrieval_base
from ecr_ray.data.kg import KnowledgeGraph, load_kg, split_qualifier
from ecr_ray.data.linking import text_key
from ecr_ray.gen.reviews import item_neighbours


def relation_name(uri: str) -> str:
    return uri.rstrip(">").rsplit("/", 1)[-1]


def item_title(kg: KnowledgeGraph, item: int) -> str:
    """'Scarface (1983 film)' -> 'Scarface'."""
    return split_qualifier(kg.names[item])[0]


class Retriever:
    def __init__(self, kg: KnowledgeGraph, base_rows: list[dict]):
        self.kg = kg
        self.base = {r["item"]: r for r in base_rows}
        self.neighbours = item_neighbours(kg)

    def knowledge(self, item: int, max_entities: int, max_triples: int, entities: list[int] | None = None,
                  triples: list[list[int]] | None = None) -> dict:
        """{entities, triples} as ids and names; explicit entities/triples (a training review's own) win."""
        row = self.base.get(item, {})
        entities = list(row.get("entities", []) if entities is None else entities)[:max_entities]
        triples = [tuple(t) for t in (row.get("triples", []) if triples is None else triples)][:max_triples]
        for r, e in self.neighbours.get(item, ()):  # fallback: the item's own KG facts
            if len(triples) >= max_triples:
                break
            if (item, r, e) not in triples:
                triples.append((item, r, e))
        return {"entity_ids": entities, "entities": [self.kg.names[e] for e in entities],
                "triple_ids": [list(t) for t in triples],
                "triples": [[item_title(self.kg, h), relation_name(self.kg.relations[r]), self.kg.names[t]] for h, r, t in triples]}

    def one_hop(self, item: int) -> set[int]:
        return {e for _, e in self.neighbours.get(item, ())}


class Grounding:
    """The KG entities a response names, movie titles included, against what its prompt supports: the entities
    and triples shown to it (with retrieval), the item's one-hop neighbours, and the movies its context names.
    A response is read as well-formed text (`TextEntityLinker(proper=True)`: 'The End', not 'at the end'); the
    recommended item (any movie of its title) is the item mention, not a named entity here; a one-word title is
    not read as a movie. One rule for choosing among candidates (`gen/generate.py`), for grounded training
    targets (`gen/targets.py`) and for the hallucination metric (`eval/generation.py`)."""

    def __init__(self, kg: KnowledgeGraph):
        from ecr_ray.data.linking import TextEntityLinker

        self.kg, self.hops = kg, Retriever(kg, [])
        self.linker, self.said = TextEntityLinker(kg, items=True, proper=True), TextEntityLinker(kg, items=True)  # replies; what users typed
        self.titles = {e: text_key(item_title(kg, e)) for e in kg.item_set}  # a title names every movie of that title
        # a one-word title is as often a character or a person ('Jack', 'Max', 'Rocky'): not read as a movie
        self.one_word = {e for e, key in self.titles.items() if " " not in key}

    def supported(self, row: dict) -> set[int]:
        """row {item, entity_ids, triple_ids, context, retrieval (default true)}."""
        shown = set(row["entity_ids"]) | {e for t in row["triple_ids"] for e in t} if row.get("retrieval", True) else set()
        said = {e for e in self.said.link(row.get("context", "")) if e in self.titles}
        return shown | self.hops.one_hop(row["item"]) | said

    def named(self, text: str, row: dict) -> tuple[list[int], list[int]]:
        """(the entities `text` names other than the item, those of them its prompt does not support)."""
        title = text_key(row["title"])
        named = [e for e in self.linker.link(text) if self.titles.get(e) != title and e not in self.one_word]
        supported = self.supported(row)
        return named, [e for e in named if e not in supported]

    def wrong_titles(self, entities: list[int]) -> list[int]:
        """The movies among `entities` (of `named`'s unsupported ones: titles neither recommended nor in the context)."""
        return [e for e in entities if e in self.titles]


def load_retriever(cfg, run_dir) -> Retriever:
    """The retriever over the run's retrieval base (gen-reviews' output)."""
    return Retriever(load_kg(cfg.data.path(cfg.data.kg_dir)), read_retrieval_base(run_dir))
