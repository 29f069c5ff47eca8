"""Generation pieces without Ray: reviews, retrieval, prompts, text metrics, scorer validation, models."""
import dataclasses
import math

import numpy as np
import pytest

from ecr_ray.config import GeneratorConfig, load_config
from ecr_ray.data.kg import load_kg
from ecr_ray.emotion.labels import LABELS
from ecr_ray.eval.scorer import CRITERIA, parse_scores
from ecr_ray.eval.text_metrics import bleu, distinct, emotion_intensity, mentions
from ecr_ray.gen.reviews import item_neighbours, read_reviews, retrieval_base, review_knowledge, split_sentences
from ecr_ray.gen.retrieval import Grounding, Retriever, item_title
from ecr_ray.llm.client import InvalidAnswer


@pytest.fixture(scope="module")
def kg():
    return load_kg(load_config("tiny").data.path("redial/kg/kgA"))


def _probs(label: str, p: float) -> list[float]:
    out = [0.05] * len(LABELS)
    out[LABELS.index(label)] = p
    return out


def test_sentences_split_on_ends_and_glued_capitals():
    text = "Loved it.The cast is superb! Is it long? Ok\nA quiet, sad and lovely ending."
    assert split_sentences(text, 2) == ["Loved it.", "The cast is superb!", "Is it long?", "A quiet, sad and lovely ending."]
    assert split_sentences(text, 5) == ["A quiet, sad and lovely ending."]


def test_read_reviews_keeps_contexts_and_extra_reviews(data_root):
    rows = read_reviews(data_root / "redial/reviews/ecr_llama_train_converted.jsonl",
                        data_root / "redial/reviews/ecr_ma_movie_reviews_processed_valid.json", 5)
    assert len(rows) == 10 and len({r["review_id"] for r in rows}) == 10
    assert all(r["context"].startswith("User: ") for r in rows[:5]) and all(r["context"] == "" for r in rows[5:])
    assert rows[0]["title"] == "The Man Who Knew Infinity (2015)" and rows[5]["title"] == "13 Assassins (2010)"


def test_review_knowledge_keeps_emotional_sentences_and_item_triples(kg):
    neighbours = item_neighbours(kg)
    item = next(i for i in kg.item_ids.tolist() if len(neighbours[i]) >= 2)
    (r0, linked), other = neighbours[item][0], next(e for e in range(kg.num_entities) if e not in {x for _, x in neighbours[item]} and e != item)
    sentences = [
        {"review_id": "a", "source": "train", "item": item, "position": 0, "text": "So happy", "entities": [linked], "probs": _probs("happy", 0.9)},
        {"review_id": "a", "source": "train", "item": item, "position": 1, "text": "Flat fact", "entities": [other], "probs": _probs("neutral", 0.9)},
        {"review_id": "a", "source": "train", "item": item, "position": 2, "text": "Loved it", "entities": [other], "probs": _probs("like", 0.6)},
        {"review_id": "b", "source": "extra", "item": item, "position": 0, "text": "No names", "entities": [], "probs": _probs("like", 0.7)},
        {"review_id": "c", "source": "extra", "item": item, "position": 0, "text": "Meh", "entities": [], "probs": _probs("neutral", 0.9)},
    ]
    reviews, funnel = review_knowledge(sentences, neighbours, threshold=0.5)
    by_id = {r["review_id"]: r for r in reviews}
    assert set(by_id) == {"a", "b"}  # c has no emotional sentence
    assert by_id["a"]["sentences"] == ["So happy", "Loved it"] and by_id["a"]["entities"] == [linked, other]
    assert by_id["a"]["triples"] == [(item, r0, linked)]  # only entities one hop from the item give triples
    assert by_id["b"]["entities"] == [] and by_id["b"]["triples"] == []  # a review with no linkable entity still counts
    assert funnel == {"sentences": 5, "sentences_with_entities": 3, "emotional_sentences": 3, "reviews_without_entities": 2,
                      "emotion_cut": 0.5, "reviews_with_sentences": 3, "reviews_kept": 2, "triples": 1}
    base = retrieval_base(reviews)
    assert base == [{"item": item, "reviews": 2, "entities": [linked, other], "triples": [[item, r0, linked]],
                     "sentences": ["So happy", "Loved it", "No names"]}]


def test_an_under_confident_classifier_still_yields_the_most_emotional_share(kg):
    """A barely trained classifier (every non-neutral probability below the threshold) must not leave the
    generator without data: the top `min_share` of sentences by their strongest non-neutral probability count."""
    item = kg.item_ids.tolist()[0]
    scores = [0.30, 0.12, 0.25, 0.11, 0.14, 0.13, 0.28, 0.10]
    sentences = [{"review_id": f"r{i}", "source": "train", "item": item, "position": 0, "text": f"s{i}", "entities": [],
                  "probs": _probs("happy", p)} for i, p in enumerate(scores)]
    reviews, funnel = review_knowledge(sentences, item_neighbours(kg), threshold=0.5)
    assert reviews == [] and funnel["emotion_cut"] == 0.5  # the threshold alone keeps nothing
    reviews, funnel = review_knowledge(sentences, item_neighbours(kg), threshold=0.5, min_share=0.25)
    assert sorted(r["review_id"] for r in reviews) == ["r0", "r6"]  # the two most emotional of eight
    assert funnel["emotional_sentences"] == 2 and 0.25 < funnel["emotion_cut"] <= 0.28
    # a confident classifier: the threshold already keeps more than the share, so it stands
    confident = [{**s, "probs": _probs("happy", 0.9 if i < 4 else 0.2)} for i, s in enumerate(sentences)]
    _, funnel = review_knowledge(confident, item_neighbours(kg), threshold=0.5, min_share=0.25)
    assert funnel["emotional_sentences"] == 4 and funnel["emotion_cut"] == 0.5


def test_retrieval_falls_back_to_kg_triples_for_an_item_without_reviews(kg):
    retriever = Retriever(kg, [])
    item = next(i for i in kg.item_ids.tolist() if len(retriever.neighbours[i]) >= 3)
    k = retriever.knowledge(item, max_entities=4, max_triples=2)
    assert k["entities"] == [] and len(k["triples"]) == 2
    assert all(t[0] == item_title(kg, item) and h == item for t, (h, _, _) in zip(k["triples"], k["triple_ids"], strict=True))
    assert {e for _, _, e in k["triple_ids"]} <= retriever.one_hop(item)


def test_prompts_truncate_context_first_and_mask_the_prompt_in_labels():
    from ecr_ray.gen.model import load_tokenizer
    from ecr_ray.gen.prompts import SYSTEM_PROMPT, PromptBuilder

    tokenizer = load_tokenizer(GeneratorConfig(model=None, method="full"))
    knowledge = {"entities": ["Tom Hanks", "Drama film"], "triples": [["Big", "starring", "Tom Hanks"]]}
    builder = PromptBuilder(tokenizer, max_length=160, response_tokens=40, retrieval=True)
    short = tokenizer.decode(builder.prompt("User: any comedy?", "Big", knowledge))
    assert builder.truncated == 0 and short.startswith(f"system: {SYSTEM_PROMPT}") and "Tom Hanks" in short and "Big | starring" in short
    long_context = "User: " + " ".join(f"word{i}" for i in range(400)) + " the very latest words"
    ids = builder.prompt(long_context, "Big", knowledge)
    text = tokenizer.decode(ids)
    assert builder.truncated == 1 and len(ids) <= 120
    assert text.startswith("system:") and "the very latest words" in text and "word0 " not in text and "Movie to recommend: Big" in text
    example = builder.example(long_context, "Big", knowledge, "A warm and funny film. " * 30)
    n_prompt = sum(x == -100 for x in example["labels"])
    assert len(example["input_ids"]) <= 160 and example["labels"][n_prompt:] == example["input_ids"][n_prompt:]
    assert len(example["input_ids"]) - n_prompt == 40  # the response was cut to response_tokens
    plain = PromptBuilder(tokenizer, 160, 40, retrieval=False)
    assert "Related entities" not in tokenizer.decode(plain.prompt("User: hi", "Big", knowledge))


@pytest.fixture(scope="module")
def near_far(kg):
    """A Grounding, an item, an entity one hop from it and one far from it (both linkable in a sentence)."""
    g = Grounding(kg)
    linkable = lambda ids: [e for e in sorted(ids) if g.linker.link(f"I liked {kg.names[e]} a lot") == [e]]  # noqa: E731
    item = next(int(i) for i in kg.item_ids if linkable(g.hops.one_hop(int(i))))
    near = linkable(g.hops.one_hop(item))[0]
    far = next(e for e in linkable(range(50)) if e not in g.hops.one_hop(item) and e != item)
    return g, item, near, far


def test_grounding_names_what_the_prompt_does_not_support_and_candidates_prefer_grounded_text(kg, near_far):
    from ecr_ray.gen.generate import grounding

    g, item, near, far = near_far
    row = {"item": item, "title": item_title(kg, item), "entity_ids": [far], "triple_ids": [], "retrieval": True,
           "knowledge": {"entities": [kg.names[far]], "triples": []}}
    text = f"I liked {kg.names[near]} a lot, and {kg.names[far]} too"
    assert g.named(text, row) == (g.linker.link(text), []) and set(g.linker.link(text)) == {near, far}  # one hop, or shown
    assert g.named(text, {**row, "entity_ids": []})[1] == [far]  # not shown and not one hop from the item: unsupported
    assert g.named(text, {**row, "retrieval": False})[1] == [far]  # a prompt without retrieval showed nothing
    generic, named = "A great movie, you will love it.", f"{row['title']} is a great movie, you will love it."
    assert grounding(named, row, g) > grounding(generic, row, g) and grounding(generic, row, g) == grounding(generic, row, g)
    assert grounding(text, row, g) > grounding(text, {**row, "entity_ids": []}, g)  # an unsupported entity counts against


@pytest.fixture(scope="module")
def titles(kg):
    """Three movies whose titles (several words) link to them alone, and a title two movies share (a remake)."""
    from collections import defaultdict

    from ecr_ray.data.linking import text_key

    g = Grounding(kg)
    linkable = [int(e) for e in kg.item_ids if len(item_title(kg, int(e)).split()) > 1
                and g.linker.link(f"I liked {item_title(kg, int(e))} a lot") == [int(e)]]
    shared = defaultdict(list)
    for e in kg.item_ids.tolist():
        shared[text_key(item_title(kg, e))].append(e)
    remake = next(es for key, es in shared.items() if len(es) > 1 and len(key.split()) > 1)
    return g, linkable[:3], remake


def test_hallucination_counts_wrong_titles_but_not_the_item_or_titles_the_user_said(kg, titles):
    g, (item, other, said), remake = titles
    row = {"item": item, "title": item_title(kg, item), "entity_ids": [], "triple_ids": [],
           "context": f"User: I loved {item_title(kg, said)}"}
    text = f"If you liked {item_title(kg, said)}, watch {item_title(kg, item)}. {item_title(kg, other)} too!"
    named, unsupported = g.named(text, row)
    assert item not in named and said in named and unsupported == [other] == g.wrong_titles(unsupported)
    assert g.named(text, {**row, "context": ""})[1] == [said, other]  # a title nobody said is a wrong title
    # the recommended title names every movie of that title: the better connected namesake is not a wrong title
    first, second = remake[:2]
    assert g.named(f"You will love {item_title(kg, first)}.", {**row, "item": second, "title": item_title(kg, second)}) == ([], [])


def test_grounded_targets_name_the_item_early_and_keep_to_the_prompt(kg, near_far):
    from ecr_ray.gen.targets import EARLY_WORDS, grounded_target

    g, item, near, far = near_far
    title = item_title(kg, item)
    row = {"item": item, "title": title, "entity_ids": [], "triple_ids": [], "context": "User: anything sad?"}
    review = ["This movie broke my heart.", f"I liked {kg.names[far]} a lot.", f"{kg.names[near]} is wonderful here."]
    assert grounded_target(review, title, row, g) == f"{title} broke my heart. {kg.names[near]} is wonderful here."
    assert grounded_target(review, title, {**row, "entity_ids": [far]}, g) == f"{title} broke my heart. " + " ".join(review[1:])
    assert grounded_target(["I cried all night long."], title, row, g) is None  # never names the item: no example
    late = ["The film stays with you.", "so " * EARLY_WORDS + f"then {title}."]
    assert grounded_target(late, title, row, g) == f"{title} stays with you. " + late[1]  # named too late: the reference becomes it
    assert grounded_target(late[::-1], title, row, g) is None  # the title and the reference both too late
    assert grounded_target([f"I liked {kg.names[far]} a lot."], title, row, g) is None  # nothing grounded is left


def test_trimmed_drops_sentences_naming_unsupported_entities_but_keeps_the_items(kg, near_far):
    from ecr_ray.gen.generate import trimmed

    g, item, near, far = near_far
    row = {"item": item, "title": item_title(kg, item), "entity_ids": [], "triple_ids": [], "retrieval": True}
    text = (f"You should see {row['title']}, much like {kg.names[far]}. I liked {kg.names[near]} a lot. "
            f"I liked {kg.names[far]} a lot. It is great!")
    assert trimmed(text, row, g) == f"You should see {row['title']}, much like {kg.names[far]}. I liked {kg.names[near]} a lot. It is great!"
    assert trimmed(text, {**row, "entity_ids": [far]}, g) == text  # shown in the prompt: supported, nothing dropped
    alone = f"I liked {kg.names[far]} a lot."
    assert trimmed(alone, row, g) == alone  # nothing would stay: kept whole


def test_text_metrics_values():
    assert distinct(["a b a b", "a c"], 1) == pytest.approx(3 / 6)
    assert distinct(["a b a b", "a c"], 2) == pytest.approx(3 / 4)
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert bleu(["the cat sat"], ["the cat sat on the mat"], 1) == pytest.approx(math.exp(1 - 6 / 3))  # precision 1, brevity penalty
    assert bleu(["dogs run fast"], ["the cat sat"], 2) < 0.05
    assert mentions("You will love Toy Story, trust me", "Toy Story") and not mentions("A story of toys", "Toy Story")
    probs = np.array([_probs("neutral", 0.9), _probs("happy", 0.8)])
    assert emotion_intensity(probs) == pytest.approx((0.05 + 0.8) / 2)


def test_scorer_answers_are_validated():
    good = {c: i for i, c in enumerate(CRITERIA)}
    assert parse_scores('Scores: {"emotional_intensity": 0, "emotional_persuasiveness": 1, "logic_persuasiveness": 2, '
                        '"informativeness": 3, "lifelikeness": 4} done') == good
    for bad, reason in [("no json here", "no JSON"), ('{"emotional_intensity": 5}', "missing criteria"),
                        ('{"emotional_intensity": 10' + "".join(f', "{c}": 1' for c in CRITERIA[1:]) + "}", "integers from 0 to 9"),
                        ('{"emotional_intensity": 5.5' + "".join(f', "{c}": 1' for c in CRITERIA[1:]) + "}", "integers from 0 to 9"),
                        ('{"emotional_intensity": true' + "".join(f', "{c}": 1' for c in CRITERIA[1:]) + "}", "integers from 0 to 9")]:
        with pytest.raises(InvalidAnswer, match=reason):
            parse_scores(bad)


GPT2 = GeneratorConfig(method="full", model=None, gpt2_layers=1, gpt2_hidden=32, gpt2_heads=2, max_length=128, lora_r=4, lora_alpha=8,
                       lora_dropout=0.0)


def test_full_model_round_trip_and_adapter_mismatch(tmp_path):
    import torch

    from ecr_ray.gen.model import GeneratorMismatch, build_generator, load_generator, save_generator

    model, tokenizer = build_generator(GPT2)
    save_generator(model, tokenizer, GPT2, tmp_path / "gpt2", {"retrieval": True})
    assert (tmp_path / "gpt2" / "model.safetensors").exists()
    loaded, tok, meta = load_generator(tmp_path / "gpt2")
    x = torch.tensor([tokenizer("hello there")["input_ids"]])
    assert torch.allclose(loaded(x).logits, model.eval()(x).logits) and meta["retrieval"] is True and tok.chat_template
    with pytest.raises(ValueError, match="max_length=4096 exceeds the 1024-token context"):
        build_generator(dataclasses.replace(GPT2, model=str(tmp_path / "gpt2"), max_length=4096))

    lora = dataclasses.replace(GPT2, method="lora", model="smollm2-135m-instruct")
    adapter, tokenizer = build_generator(lora)
    save_generator(adapter, tokenizer, lora, tmp_path / "lora", {"retrieval": True})
    assert (tmp_path / "lora" / "adapter_model.safetensors").exists() and not (tmp_path / "lora" / "model.safetensors").exists()
    assert load_generator(tmp_path / "lora")[2]["base"]["architecture"] == "llama"
    with pytest.raises(GeneratorMismatch, match="trained on smollm2-135m-instruct .*the base model .*gpt2.* is .*'gpt2'"):
        load_generator(tmp_path / "lora", base_model=str(tmp_path / "gpt2"))


def test_generator_dtype_knob():
    import torch

    from ecr_ray.gen.model import load_base

    base, _ = load_base(dataclasses.replace(GPT2, model="smollm2-135m-instruct", dtype="bfloat16"))
    assert {p.dtype for p in base.parameters()} == {torch.bfloat16}  # half the memory: a 7B base fits a 24 GB GPU


def test_a_chat_reply_honours_max_tokens_and_stop_plain_and_streamed():
    from ecr_ray.config import DecodingConfig
    from ecr_ray.gen.generate import ResponseGenerator, StopCut

    smol = dataclasses.replace(GPT2, model="smollm2-135m-instruct", max_length=256)
    generator = ResponseGenerator(None, smol, DecodingConfig(max_new_tokens=12, no_repeat_ngram_size=0), retrieval=False)
    row = {"context": "User: I loved Inception", "title": "Heat", "knowledge": {"entities": [], "triples": []}}
    full = generator.reply(row)
    assert full["completion_tokens"] == 12 and full["finish_reason"] == "length" and full["prompt_tokens"] > 5 and full["text"]
    short = generator.reply(row, {"max_new_tokens": 3})
    assert short["completion_tokens"] == 3 and short["finish_reason"] == "length" and full["text"].startswith(short["text"])
    assert generator.reply(row, {"max_new_tokens": 99})["completion_tokens"] == 12  # never above the config's limit
    stop = full["text"][len(full["text"]) // 2:][:3]
    stopped = generator.reply(row, {"stop": [stop]})
    assert stopped["text"] == full["text"][: full["text"].index(stop)].strip() and stopped["finish_reason"] == "stop"
    *pieces, end = generator.stream(row, {"stop": [stop]})
    assert "".join(pieces) == stopped["text"] and end["finish_reason"] == "stop" and len(pieces) > 1
    word = full["text"].split()[2]  # a stop after a space: the space goes too, streamed or not
    assert generator.reply(row, {"stop": [word]})["text"] == full["text"].split(word)[0].strip()
    *pieces, _ = generator.stream(row, {"stop": [word]})
    assert "".join(pieces) == full["text"].split(word)[0].strip()
    seeded = [generator.reply(row, {"temperature": 1.0, "seed": 5})["text"] for _ in range(2)]
    assert seeded[0] == seeded[1]

    cut = StopCut(["END", "xy"])
    assert [cut.feed(p) for p in ["abc E", "N", "x", "y more"]] == ["abc ", "", "EN", ""] and cut.hit
    cut = StopCut(["END"])
    assert cut.feed("the EN") == "the " and cut.feed("ding") == "ENding" and cut.flush() == "" and not cut.hit


def test_the_batch_decoder_equals_generate_and_requests_join_and_leave_the_batch():
    import torch

    from ecr_ray.config import DecodingConfig
    from ecr_ray.gen.decode import BatchDecoder, NGramBan, RowDecoding
    from ecr_ray.gen.generate import ChatBatch, ResponseGenerator

    smol = dataclasses.replace(GPT2, model="smollm2-135m-instruct", max_length=256)
    generator = ResponseGenerator(None, smol, DecodingConfig(max_new_tokens=16, no_repeat_ngram_size=3), retrieval=False)
    model, tok = generator.model, generator.tokenizer
    texts = ["User: I loved Inception, what else?\nAssistant:", "Hi, I like scary movies"]
    for text, penalty in zip(texts, (1.0, 1.3)):
        ids = tok(text).input_ids
        with torch.no_grad():
            ref = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, no_repeat_ngram_size=3, repetition_penalty=penalty,
                                 pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
        decoder = BatchDecoder(model, tok.eos_token_id, 3, ngram_prompt=True)  # generate()'s ban counts the prompt
        key = decoder.add(ids, RowDecoding(16, repetition_penalty=penalty))
        made = []
        while decoder.in_flight:
            made.append(decoder.step()[key])
        assert made == ref

    # a request joins a running one two steps in (its cache left-padded to the other's length), the shorter
    # limit leaves early, a third joins after it; each is decoded as it would be alone
    rows = [{"context": f"User: {t}", "title": "Heat", "knowledge": {"entities": [], "triples": []}} for t in [*texts, "Any comedies?"]]
    options = [None, {"max_new_tokens": 5}, {"max_new_tokens": 6}]
    alone = [generator.reply(r, o) for r, o in zip(rows, options)]
    chat, got, keys = ChatBatch(generator), {}, {}
    for step in range(40):
        if step in (0, 2, 9):
            i = (0, 2, 9).index(step)
            keys[chat.add(rows[i], options[i])] = i
        for key, (piece, end) in chat.step().items():
            got.setdefault(keys[key], []).extend([piece, end] if end else [piece])
    for i in range(3):
        *pieces, end = got[i]
        assert {"text": "".join(pieces), **end} == alone[i]
    assert alone[1]["completion_tokens"] == 5 and alone[1]["finish_reason"] == "length" and not chat.in_flight

    # the repetition penalty weighs the prompt's tokens (generate()'s) or, with penalty_prompt off, the response's only
    from ecr_ray.gen.decode import _choose, _Row

    scores = torch.zeros(2, 10)
    scores[:, 3], scores[:, 5] = 2.0, 1.9
    rows = [_Row([3, 7], RowDecoding(4, repetition_penalty=2.0), 0, False),
            _Row([3, 7], RowDecoding(4, repetition_penalty=2.0, penalty_prompt=False), 0, False)]
    assert _choose(rows, scores.clone()) == [5, 3]
    rows[1].seen.add(3)  # once the response says it, it is weighed down too
    assert _choose(rows, scores.clone()) == [5, 5]

    ban = NGramBan(3, [1, 2, 3, 1])
    ban.push(2)
    assert ban.banned() == {3}
    ban.push(4)
    assert ban.banned() == set() and NGramBan(3, [1, 2]).banned() == set()


def test_a_prompt_decoded_several_times_is_prefilled_once_and_each_copy_decodes_as_alone():
    from ecr_ray.config import DecodingConfig
    from ecr_ray.gen.decode import RowDecoding
    from ecr_ray.gen.generate import ResponseGenerator

    smol = dataclasses.replace(GPT2, model="smollm2-135m-instruct", max_length=256)
    generator = ResponseGenerator(None, smol, DecodingConfig(max_new_tokens=10, no_repeat_ngram_size=3), retrieval=False)
    same, other = (generator.tokenizer(t).input_ids for t in ("User: I loved Inception.\nAssistant:", "Hi, any comedies?"))

    def decode(prompts):
        decoder, widths = generator.decoder(), []
        hook = generator.model.register_forward_pre_hook(lambda m, a, kw: widths.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
        keys = [decoder.add(p, RowDecoding(10)) for p in prompts]
        made = {k: [] for k in keys}
        while decoder.in_flight:
            for key, token in decoder.step().items():
                made[key].append(token)
        hook.remove()
        return [made[k] for k in keys], widths

    (a, b, c), widths = decode([same, other, same])
    assert widths[0][0] == 2  # two distinct prompts through the prefill, three rows decoded
    assert a == c == decode([same])[0][0] and b == decode([other])[0][0]


def test_the_decode_names_the_item_with_name_item():
    """SmolLM2 untuned, on a prompt that never mentions the item: with name_item its one decode names it."""
    from ecr_ray.config import DecodingConfig
    from ecr_ray.gen.decode import RowDecoding
    from ecr_ray.gen.generate import ResponseGenerator, sentence_ends

    smol = dataclasses.replace(GPT2, model="smollm2-135m-instruct", max_length=256)
    said = {}
    for name_item in (False, True):
        generator = ResponseGenerator(None, smol, DecodingConfig(max_new_tokens=40, name_item=name_item), retrieval=True)
        decoder = generator.decoder()
        key = decoder.add(generator.tokenizer("User: I loved Inception. What else?\nAssistant:").input_ids,
                          generator.naming(RowDecoding(40), "Paddington 2"))
        tokens = []
        while decoder.in_flight:
            tokens += decoder.step().values()
        said[name_item] = generator.tokenizer.decode(tokens, skip_special_tokens=True)
    assert mentions(said[True], "Paddington 2") and not mentions(said[False], "Paddington 2")
    ends, period = sentence_ends(generator.tokenizer)
    assert period in ends and generator.tokenizer.encode("!", add_special_tokens=False)[0] in ends


def test_top_p_sampling_keeps_the_nucleus_within_the_head_or_beyond_it():
    import torch

    from ecr_ray.gen.decode import NUCLEUS_HEAD, RowDecoding, _choose, _Row

    scores = torch.stack([-0.001 * torch.arange(2000.0),  # nearly flat: the 0.9 nucleus lies far beyond the head
                          torch.cat([torch.tensor([10.0, 9.5, 9.0]), torch.zeros(1997)])])  # peaked: three tokens hold 0.956
    probs = torch.softmax(scores[0], -1)
    nucleus = int(((probs.cumsum(0) - probs) <= 0.9).sum())
    rows = [_Row([1], RowDecoding(1, temperature=1.0, top_p=0.9, seed=s), 0, False) for s in (1, 2)]
    drawn = [_choose(rows, scores.clone()) for _ in range(300)]
    flat, peaked = [d[0] for d in drawn], [d[1] for d in drawn]
    assert max(flat) < nucleus and max(flat) > NUCLEUS_HEAD  # the full sort ran, and cut where generate() cuts
    assert set(peaked) == {0, 1, 2}
    greedy = _Row([1], RowDecoding(1), 0, False)
    assert _choose([greedy, rows[0]], scores.clone())[0] == 0


def test_a_reply_that_has_not_named_the_item_gets_its_title_at_a_sentence_end():
    from ecr_ray.gen.decode import RowDecoding, _Row

    eos, ends, period, title = 0, frozenset({3}), 3, ((7, 8), (9,))

    def decode(chosen: list[int], max_new_tokens: int = 20) -> list[int]:
        row, out = _Row([1], RowDecoding(max_new_tokens, title=title), 0, False), []
        for token in chosen:  # what the model would choose at each step
            out.append(row.take(token, eos, ends, period))
            row.made += 1
        return out

    assert decode([5, 3, 6, 6, 5, 0]) == [5, 3, 7, 8, 5, 0]  # after the first sentence end: the title, then the model goes on
    assert decode([5, 9, 3, 6, 0]) == [5, 9, 3, 6, 0]  # said already (as it may be said): nothing put in
    assert decode([5, 5, 0, 6, 6, 0]) == [5, 5, 3, 7, 8, 0]  # at the end without a sentence end: a period, then the title
    assert decode([0, 6, 0]) == [7, 8, 0]  # an empty reply: the title alone
    short, long = decode([5, 5, 3, 6], max_new_tokens=3), decode([5, 5, 3, 6, 6])
    assert long[:len(short)] == short  # the limit never decides: a shorter reply is a prefix of the longer one


def test_the_judge_reads_a_probability_weighted_digit_with_the_shared_prefix_cached():
    import math

    import torch

    from ecr_ray.eval.judge import CRITERIA, LocalJudge, digit_score, logprob_score

    assert digit_score({"7": 1.0}) == 7.0 and digit_score({"3": 0.25, " 3": 0.25, "5": 0.5, "The": 0.9}) == 4.0
    assert digit_score({"The": 1.0, "10": 0.5}) is None
    assert logprob_score([{"token": "8", "logprob": math.log(0.3)}, {"token": "2", "logprob": math.log(0.1)}]) == 6.5

    judge = LocalJudge("smollm2-135m-instruct")
    judge.model.float()  # bf16 where native (AVX512-BF16): a cached and a whole pass then differ by its rounding, not by the cache
    context, title, response = "User: I loved Inception, anything like it?", "Interstellar (2014)", "Watch Interstellar: Nolan's space epic."
    scores = judge.score(context, title, response)
    assert list(scores) == list(CRITERIA) and all(0.0 <= s <= 9.0 for s in scores.values())
    prefix, suffixes = judge.parts(context, title, response)
    for criterion in CRITERIA:  # each question after the cached prefix reads as the whole sequence in one pass
        with torch.inference_mode():
            whole = judge.digit_probs(judge.model(input_ids=torch.tensor([prefix + suffixes[criterion]])).logits[0, -1])
        assert abs(scores[criterion] - sum(d * p for d, p in enumerate(whole)) / sum(whole)) < 1e-3
    # the next row of the same turn starts from the conversation already in the cache, and scores as a fresh judge does
    other, model, fed = "I'm glad you liked it. I think it's a great movie.", judge.model, []

    class Spy:  # the model, noting how many tokens each call feeds it
        def __getattr__(self, name):
            return getattr(model, name)

        def __call__(self, **kw):
            fed.append(kw["input_ids"].shape[1])
            return model(**kw)

    judge.model = Spy()
    reused = judge.score(context, title, other)
    judge.last = None
    fresh, (full, _) = judge.score(context, title, other), judge.parts(context, title, other)
    shared = next(i for i, (a, b) in enumerate(zip(prefix, full)) if a != b)
    assert shared > len(full) // 2 and fed[0] == len(full) - shared and fed[2] == len(full)
    assert all(abs(reused[c] - fresh[c]) < 1e-3 for c in CRITERIA)


def test_dialogue_intervals_resample_whole_dialogues():
    from ecr_ray.config import IntervalConfig
    from ecr_ray.eval.intervals import dialogue_intervals

    values = np.array([1.0, 1.0, 0.0, 0.0])
    mean = lambda pick: {"m": float(values[pick].mean())}  # noqa: E731
    # two dialogues of two rows: a resample holds both rows of each dialogue it draws, so its mean is 0, 0.5 or 1
    assert dialogue_intervals(mean, ["a", "a", "b", "b"], IntervalConfig(samples=400, seed=0)) == {"m": [0.0, 1.0]}
    narrower = dialogue_intervals(mean, ["a", "b", "c", "d"], IntervalConfig(samples=400, seed=0))["m"]
    assert 0.0 <= narrower[0] and narrower[1] <= 1.0 and narrower[0] < 0.5 < narrower[1]
    assert dialogue_intervals(mean, ["a", "b", "c", "d"], IntervalConfig(samples=0)) == {}


def test_a_response_that_misses_the_item_is_decoded_again_from_its_title():
    from ecr_ray.config import DecodingConfig
    from ecr_ray.eval.text_metrics import mentions
    from ecr_ray.gen.generate import ResponseGenerator

    rows = [{"context": f"User: {ask}", "title": title, "knowledge": {"entities": [], "triples": []}}
            for ask, title in (("I want a film about the sea", "Jaws"), ("Something scary?", "The Shining"))]
    decoding = DecodingConfig(max_new_tokens=6, no_repeat_ngram_size=3)
    generator = ResponseGenerator(None, GPT2, decoding, retrieval=False)  # an untrained GPT-2: never names an item by itself
    before, _ = generator.respond(rows)
    assert not any(mentions(text, row["title"]) for text, row in zip(before, rows))
    generator.decoding = dataclasses.replace(decoding, title_fallback=True)
    after, _ = generator.respond(rows)
    for text, row in zip(after, rows):
        assert text.startswith(row["title"]) and mentions(text, row["title"]) and len(text) > len(row["title"])


def test_prompts_whose_candidates_all_miss_the_item_get_more_samples():
    from ecr_ray.config import DecodingConfig
    from ecr_ray.gen.generate import ResponseGenerator

    rows = [{"context": f"User: {ask}", "title": title, "knowledge": {"entities": [], "triples": []}}
            for ask, title in (("I want a film about the sea", "Jaws"), ("Something scary?", "The Shining"))]
    generator = ResponseGenerator(None, GPT2, DecodingConfig(max_new_tokens=4, candidates=2, more_candidates=3), retrieval=False)
    decode, asked = generator._decode, []

    def named_late(requests):  # the real decoder; the sea prompt's fourth sample is then made to name its item
        asked.append([(prompt[-3:], settings.seed) for prompt, settings, _ in requests])
        texts = decode(requests)
        return [t + " Jaws" if len(asked) == 2 and i == 1 else t for i, t in enumerate(texts)]

    generator._decode = named_late
    chosen, _ = generator.respond(rows)
    first, more = asked[:2]
    assert len(first) == 4 and len(more) == 6  # 2 candidates each; both missed the item: 3 more each
    assert not {seed for _, seed in more} & {seed for _, seed in first}  # new samples, not the first ones again
    assert chosen[0].endswith(" Jaws") and "Jaws" not in chosen[1]
    generator.decoding = DecodingConfig(max_new_tokens=4, candidates=2)
    asked.clear()
    generator.respond(rows)
    assert len(asked[0]) == 4 and asked[1] == []  # more_candidates off: nothing more decoded


def test_the_configured_repetition_penalty_reaches_every_candidate_and_a_request_overrides_it():
    from ecr_ray.config import DecodingConfig
    from ecr_ray.gen.generate import ResponseGenerator

    generator = ResponseGenerator(None, GPT2, DecodingConfig(max_new_tokens=4, repetition_penalty=1.3, candidates=3), retrieval=False)
    assert [generator.candidate([1, 2], i).repetition_penalty for i in range(3)] == [1.3] * 3
    assert generator.settings().repetition_penalty == 1.3 and generator.settings({"repetition_penalty": 1.1}).repetition_penalty == 1.1


def test_judge_validity_reads_each_criterion_against_its_own_negative(kg):
    """The AUC of a criterion is real vs its own negative, over the turns that have one; a turn without it sits out."""
    from ecr_ray.eval.judge_validity import KINDS, NEGATIVES, _deinformed, _shuffled, judge_validity

    g = Grounding(kg)
    assert _deinformed("You will love The Dark Knight with Christian Bale.", "The Dark Knight", g) == "You will love it with it."
    assert _deinformed("Have you seen it?", "The Dark Knight", g) is None  # names nothing: no deinformed version
    assert sorted(_shuffled("a b c d", "1:2").split()) == ["a", "b", "c", "d"] and _shuffled("a b c d", "1:2") == _shuffled("a b c d", "1:2")
    sample = [{"conversation_id": d, "turn": 1} for d in range(4)]
    row = {"context": "", "title": "", "response": ""}
    asked = {kind: [row] * 4 for kind in KINDS}
    asked["unemotional"] = [row, None, None, row]  # two turns without an emotional sentence
    score = lambda v: {"status": "ok", **{c: v for c in CRITERIA}}  # noqa: E731
    results = [score(6)] * 4 + [score(2)] * 4 + [score(6)] * 4 + [score(2), score(2), score(9), score(9)] + [score(1)] * 2
    v = judge_validity(load_config("tiny"), sample, asked, results)
    assert v["informativeness"]["auc"] == 1.0 and v["logic_persuasiveness"]["auc"] == 0.5  # deinformed lower; other movie a tie
    assert v["lifelikeness"]["auc"] == 0.5 and v["emotional_intensity"] == {**v["emotional_intensity"], "turns": 2, "auc": 1.0}
    assert {c: v[c]["negative"] for c in CRITERIA} == NEGATIVES and v["valid"] is False


def test_the_audit_sets_verdicts_beside_the_automatic_flags_on_the_replies_they_were_given(kg, near_far):
    import json

    from ecr_ray.eval.audit import agreement, audit_sample, audit_table, cohen_kappa, inter_rater, read_labels, response_sha

    g, item, near, far = near_far
    base = {"item": item, "title": item_title(kg, item), "entity_ids": [], "triple_ids": [], "context": "User: hi"}
    flagged = f"I liked {kg.names[far]} a lot"  # an entity the prompt does not support: the automatic rate counts it
    rows = [{**base, "conversation_id": c, "turn": 1, "response": text} for c, text in
            enumerate([flagged, "The story is about a girl.", "A great movie.", "A great movie!", "Changed since."])]
    verdicts = [True, True, False, False, False]  # the second: a plot claim the KG cannot see
    lines = [json.dumps({"conversation_id": r["conversation_id"], "turn": 1, "response_sha": response_sha(r["response"]), "hallucinated": v,
                         "claims": ["a plot"] if v else []}) for r, v in zip(rows, verdicts, strict=True)]
    lines[-1] = lines[-1].replace(response_sha("Changed since."), "0" * 12)
    result = agreement(rows, read_labels("\n".join(lines)), g, load_config("tiny").eval.intervals)
    assert result["audited"] == 4 and result["stale"] == ["4/1"] and result["missing"] == []
    assert (result["audited_rate"], result["automatic_rate"], result["agreement"]) == (0.5, 0.25, 0.75)
    assert result["confusion"] == {"both": 1, "audit only": 1, "automatic only": 0, "neither": 2}
    assert result["disagreements"] == [{"reply": "1/1", "audit": ["a plot"], "automatic": []}]
    assert result["kappa"] == pytest.approx(0.5) and cohen_kappa(np.array([True, False]), np.array([True, False])) == 1.0
    assert "| agreement | 0.75" in audit_table(result, "labels.jsonl") and "1 / 1 / 0 / 2" in audit_table(result, "labels.jsonl")
    assert [r["conversation_id"] for r in audit_sample(rows * 3, 4)] == sorted(r["conversation_id"] for r in audit_sample(rows * 3, 4))
    with pytest.raises(ValueError, match="labels line 1"):
        read_labels('{"conversation_id": 1}')
    # a second auditor: calls reply 2 hallucinated too, and judged only the first four (the fifth changed anyway)
    second = read_labels("\n".join(line.replace('"hallucinated": false', '"hallucinated": true') if i == 2 else line
                                   for i, line in enumerate(lines[:4])))
    two = inter_rater(rows, read_labels("\n".join(lines)), second)
    assert two == {"replies": 4, "first_rate": 0.5, "second_rate": 0.75, "agreement": 0.75, "kappa": pytest.approx(0.5)}
    result["second"] = {**two, "labels": "second.jsonl"}
    assert "(second.jsonl) on 4 of the same replies: 0.75 hallucinated against the first's 0.50; agreement 0.75" in audit_table(result, "l")
