"""The DBpedia subgraph (kgA): ids, readable names, items and torch-geometric edges."""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np

RESOURCE_PREFIX = "<http://dbpedia.org/resource/"
SELF_LOOP = "self_loop"
KG_FILES = ("entity2id.json", "relation2id.json", "dbpedia_subkg.json", "item_ids.json")
_QUALIFIER = re.compile(r"^(.*?)\s*\(([^()]*)\)$")


def uri_to_name(uri: str) -> str:
    """'<http://dbpedia.org/resource/Scarface_(1983_film)>' -> 'Scarface (1983 film)'."""
    if uri.startswith(RESOURCE_PREFIX):
        uri = uri[len(RESOURCE_PREFIX):-1]
    return unquote(uri).replace("_", " ").strip()


def split_qualifier(name: str) -> tuple[str, str | None]:
    """'Scarface (1983 film)' -> ('Scarface', '1983 film'); names without one -> (name, None)."""
    m = _QUALIFIER.match(name)
    return (m.group(1), m.group(2)) if m and m.group(1) else (name, None)


@dataclass(frozen=True)
class KnowledgeGraph:
    uris: list[str]  # entity id -> DBpedia URI
    names: list[str]  # entity id -> readable name
    relations: list[str]  # relation id -> relation URI (or 'self_loop')
    item_ids: np.ndarray  # recommendable item entity ids (sorted)
    triples: np.ndarray  # (n, 3) int64: head, relation, tail, as stored (self loops included)

    @property
    def num_entities(self) -> int:
        return len(self.uris)

    @property
    def num_relations(self) -> int:
        return len(self.relations)

    @functools.cached_property
    def item_set(self) -> frozenset[int]:
        return frozenset(self.item_ids.tolist())

    @functools.cached_property
    def degree(self) -> np.ndarray:
        """Triples touching each entity: a popularity proxy for choosing between namesakes."""
        return np.bincount(self.triples[:, [0, 2]].ravel(), minlength=self.num_entities)

    def relation_id(self, name: str) -> int:
        """Relation id by its short name ('genre') or full URI."""
        for i, rel in enumerate(self.relations):
            if rel == name or rel.rstrip(">").rsplit("/", 1)[-1] == name:
                return i
        raise KeyError(f"unknown KG relation {name!r}; known: {self.relations}")

    def edges(self):
        """torch-geometric (edge_index [2, E], edge_type [E]) with every edge in both directions.

        A reversed edge keeps its relation id (as UniCRS/ECR do), so relation ids stay those of
        relation2id.json; self loops are kept once.
        """
        import torch

        h, r, t = self.triples.T
        loop = h == t
        src = np.concatenate([h, t[~loop]])
        dst = np.concatenate([t, h[~loop]])
        rel = np.concatenate([r, r[~loop]])
        return torch.from_numpy(np.stack([src, dst])), torch.from_numpy(rel)


@functools.lru_cache(maxsize=4)
def load_kg(kg_dir: str | Path) -> KnowledgeGraph:
    """Read entity2id.json, relation2id.json, dbpedia_subkg.json and item_ids.json of one KG folder."""
    kg_dir = Path(kg_dir)
    entity2id = json.loads((kg_dir / KG_FILES[0]).read_text())
    relation2id = json.loads((kg_dir / KG_FILES[1]).read_text())
    uris = [""] * len(entity2id)
    for uri, i in entity2id.items():
        uris[i] = uri
    if "" in uris:
        raise ValueError(f"{kg_dir}/entity2id.json: entity ids are not contiguous 0..{len(uris) - 1}")
    relations = [""] * len(relation2id)
    for rel, i in relation2id.items():
        relations[i] = rel
    subkg = json.loads((kg_dir / KG_FILES[2]).read_text())
    triples = np.array(
        [(int(h), r, t) for h, edges in subkg.items() for r, t in edges], dtype=np.int64
    ).reshape(-1, 3)
    for col, bound, what in ((0, len(uris), "head"), (1, len(relations), "relation"), (2, len(uris), "tail")):
        if len(triples) and not (0 <= triples[:, col].min() and triples[:, col].max() < bound):
            raise ValueError(f"{kg_dir}/dbpedia_subkg.json: {what} id out of range")
    item_ids = np.array(sorted(json.loads((kg_dir / KG_FILES[3]).read_text())), dtype=np.int64)
    return KnowledgeGraph(
        uris=uris,
        names=[uri_to_name(u) for u in uris],
        relations=relations,
        item_ids=item_ids,
        triples=triples,
    )
