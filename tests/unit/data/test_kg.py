import numpy as np

from ecr_ray.data.kg import load_kg, split_qualifier, uri_to_name


def test_kg_shapes(data_root):
    kg = load_kg(data_root / "redial/kg/kgA")
    assert kg.num_entities == 31161 and kg.num_relations == 25
    assert len(kg.item_ids) == 6281 and kg.item_ids.max() < kg.num_entities
    assert kg.triples.shape == (105364, 3)
    assert kg.relations[kg.relation_id("self_loop")] == "self_loop" and kg.relation_id("genre") == 1


def test_edges_both_directions_with_consistent_relations(data_root):
    kg = load_kg(data_root / "redial/kg/kgA")
    edge_index, edge_type = kg.edges()
    loops = int((kg.triples[:, 0] == kg.triples[:, 2]).sum())
    assert int((kg.triples[:, 1] == kg.relation_id("self_loop")).sum()) == 24032
    assert loops == 24043  # 11 real relations also point an entity at itself
    assert edge_index.shape == (2, 2 * 105364 - loops) and edge_type.shape == (2 * 105364 - loops,)
    edges = set(zip(edge_index[0].tolist(), edge_index[1].tolist(), edge_type.tolist()))
    for h, r, t in kg.triples[:: 997]:
        assert (h, t, r) in edges and (t, h, r) in edges  # a reversed edge keeps its relation id
    assert 0 <= int(edge_type.min()) and int(edge_type.max()) < kg.num_relations


def test_names_from_uris(data_root):
    kg = load_kg(data_root / "redial/kg/kgA")
    assert uri_to_name("<http://dbpedia.org/resource/Scarface_(1983_film)>") == "Scarface (1983 film)"
    assert uri_to_name("<http://dbpedia.org/resource/Am%C3%A9lie>") == "Amélie"
    assert split_qualifier("Scarface (1983 film)") == ("Scarface", "1983 film")
    assert split_qualifier("Pitch Perfect") == ("Pitch Perfect", None)
    scarface = kg.uris.index("<http://dbpedia.org/resource/Scarface_(1983_film)>")
    assert kg.names[scarface] == "Scarface (1983 film)" and scarface in kg.item_set
    assert not any("<" in n or "_" in n for n in kg.names[:2000])
    assert isinstance(kg.item_ids, np.ndarray)
