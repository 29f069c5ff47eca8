"""The simulator's parts on the tiny KG: the title filter, the success rule, and a real small model writing the
seeker's messages through the filter."""
import pytest

from ecr_ray.config import load_config
from ecr_ray.data.kg import load_kg
from ecr_ray.gen.retrieval import item_title
from ecr_ray.sim.seeker import Seeker, TitleFilter, clean, persona_prompt, seeker_instruction, speaks_as_assistant
from ecr_ray.sim.systems import KS, AlwaysTarget, Random, hits


@pytest.fixture(scope="module")
def kg():
    return load_kg(load_config("tiny").data.path("redial/kg/kgA"))


def _persona(kg, titles=("Titanic", "The Notebook")) -> dict:
    by_title = {}
    for e in kg.item_ids.tolist():
        by_title.setdefault(item_title(kg, e), e)
    targets = [by_title[t] for t in titles]
    return {"conversation_id": 7, "targets": targets, "titles": list(titles), "feedback": {targets[0]: "liked", targets[1]: "disliked"},
            "attributes": {"genre": ["romance", "drama"], "starring": ["Kate Winslet"], "director": ["James Cameron"]},
            "emotions": ["like", "happy"]}


def test_the_title_filter_catches_a_target_however_it_is_written(kg):
    f, persona = TitleFilter(kg), _persona(kg)
    assert f.leaks("I want something like titanic, the ship one", persona) == ["Titanic"]
    assert f.leaks("Maybe The Notebook (2004)?", persona) == ["The Notebook"]
    assert f.leaks("A romance with Kate Winslet, please", persona) == []  # an attribute may be said
    assert f.leaks("I loved Inception", persona) == []  # another movie is not a target


def test_a_seeker_speaking_as_the_assistant_is_caught_and_one_in_role_is_not():
    """Messages the cpu run's 1.5B seeker wrote: offering help, refusing and recommending are the assistant's voice."""
    assistant = ["Sure, I'd be happy to help you find a movie that fits your criteria.", "I'm sorry, but I can't assist with that.",
                 "I recommend you watch a comedy with Will Ferrell.", "Sorry, but I cannot help with that request."]
    seeker = ["I'm sorry, but I don't like movies with famous actors.", "Could you help me find a comedy with Will Ferrell?",
              "Not what I want: something darker, maybe a thriller.", "I liked that one! Anything else by the same director?"]
    assert [speaks_as_assistant(m) for m in assistant + seeker] == [True] * 4 + [False] * 4


def test_a_round_succeeds_when_its_top_k_holds_a_target():
    assert hits([5, 9, 3], [3]) == {1: False, 10: True, 50: True}
    assert hits([3], [3, 4]) == dict.fromkeys(KS, True) and hits([], [3]) == dict.fromkeys(KS, False)
    items = list(range(100))
    assert hits(items, [49]) == {1: False, 10: False, 50: True} and not any(hits(items, [50]).values())


def test_the_prompt_hides_nothing_it_needs_and_reacts_as_the_logged_seeker(kg):
    persona = _persona(kg)
    prompt = persona_prompt(persona)
    assert "Titanic (liked)" in prompt and "NEVER say these titles" in prompt and "genre: romance, drama" in prompt
    assert "like and happy" in prompt
    hit = seeker_instruction(persona, "free", 2, {"title": "The Notebook", "target": persona["targets"][1]})
    assert "you disliked it" in hit and "not what you want" not in hit
    miss = seeker_instruction(persona, "attribute", 2, {"title": "Jaws", "target": None})
    assert "not what you want" in miss and "actors you want: Kate Winslet" in miss  # round 2 asks the second attribute
    assert clean('User: "Something romantic, please."\nmore', 3) == "Something romantic, please."


def test_a_real_small_model_plays_the_seeker_through_the_filter_and_the_sanity_systems_behave(kg):
    from ecr_ray.sim.seeker import LocalChat
    from ecr_ray.sim.conversations import converse

    cfg = load_config("tiny")
    persona, f = _persona(kg), TitleFilter(kg)
    seeker = Seeker(LocalChat("smollm2-135m-instruct"), f, cfg.sim.llm, retries=2, max_words=30, seed=0)
    always = converse([persona], AlwaysTarget(kg, 0), seeker, "free", 2, kg)[0]
    if not always["failed"]:  # the first message passed the filter: the target is the first item at round 1
        assert always["success"] == dict.fromkeys(KS, 1) and len(always["rounds"]) == 1
    chance = converse([persona], Random(kg, 0), seeker, "attribute", 2, kg)[0]
    assert all(x["message"] is None or not f.leaks(x["message"], persona) for d in (always, chance) for x in d["rounds"])
    for k in KS:  # success at k: the first round whose top k held a target
        first = next((x["round"] for x in chance["rounds"] if x["message"] and x["hits"][k]), None)
        assert chance["success"][k] == first
    assert chance["success"][1] is None  # two random lists of 6,281 items, two targets: about 1 in 1,600
    # the opening of a dialogue is written once for every system: the same first message
    assert converse([persona], Random(kg, 1), seeker, "attribute", 1, kg)[0]["rounds"][0]["message"] == chance["rounds"][0]["message"]


def test_each_simulating_actor_keeps_to_its_share_of_the_endpoints_rate():
    import dataclasses

    from ecr_ray.sim.seeker import EndpointChat

    llm = {**dataclasses.asdict(load_config("tiny").sim.llm), "base_url": "http://127.0.0.1:9/v1", "qps": 8.0}
    assert EndpointChat(llm).chat.limiter._interval == pytest.approx(1 / 8)
    assert EndpointChat(llm, actors=4).chat.limiter._interval == pytest.approx(1 / 2)  # 4 actors together: still 8 a second
