"""The chat API's validation, the conversation -> recommender turn mapping and chat linking (no Ray)."""
import asyncio

import pytest
from pydantic import ValidationError

from ecr_ray.config import RecConfig, ServeConfig
from ecr_ray.data.kg import load_kg
from ecr_ray.data.linking import TextEntityLinker
from ecr_ray.data.redial import RECOMMENDER, SEEKER
from ecr_ray.rec.features import entity_emotions
from ecr_ray.serving.api import BadRequest, ChatRequest, check_conversation, validation_message
from ecr_ray.serving.app import timed
from ecr_ray.serving.components import NotTrained, conversation_turn, load_run

LIMITS = ServeConfig(max_turns=4, max_message_chars=50)


@pytest.fixture(scope="module")
def kg(data_root):
    from ecr_ray.config import load_config

    cfg = load_config("tiny")
    return load_kg(cfg.data.path(cfg.data.kg_dir))


def _check(messages, **extra):
    return check_conversation(ChatRequest(messages=messages, **extra), LIMITS)


def test_conversation_limits_are_400s_naming_the_field():
    ok = _check([{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}])
    assert ok == [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]
    cases = [
        ([{"role": "user", "content": "   "}], "messages[0].content", "empty"),
        ([{"role": "user", "content": "x" * 51}], "messages[0].content", "51 characters; at most 50"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 2 + [{"role": "user", "content": "c"}],
         "messages", "5 user and assistant messages; at most 4"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "messages", "should come from the user"),
        ([{"role": "system", "content": "only a system prompt"}], "messages", "should come from the user"),
    ]
    for messages, param, text in cases:
        with pytest.raises(BadRequest, match=text) as err:
            _check(messages)
        assert err.value.param == param and err.value.status == 400


def test_unknown_fields_roles_and_types_are_named():
    def message_of(body):
        with pytest.raises(ValidationError) as err:
            ChatRequest.model_validate(body)
        return validation_message(err.value.errors(include_url=False))

    user = [{"role": "user", "content": "hi"}]
    assert message_of({"messages": user, "temperature_x": 1}) == ("unknown field 'temperature_x'", "temperature_x")
    assert message_of({"messages": [{"role": "bot", "content": "hi"}]})[1] == "messages.0.role"
    assert message_of({"messages": [{"role": "user", "content": ["parts"]}]})[1] == "messages.0.content"
    assert message_of({"messages": [{"role": "user", "content": [{"text": "no type"}]}]})[1] == "messages.0.content"
    assert message_of({"messages": []})[1] == "messages"
    assert message_of({"messages": user, "n": 2})[1] == "n"
    assert message_of({"messages": user, "top_k": 0})[1] == "top_k"


def test_a_slow_request_ends_with_504():
    with pytest.raises(BadRequest, match="longer than 0.05 s") as err:
        asyncio.run(timed(0.05, asyncio.sleep(5)))
    assert err.value.status == 504
    assert asyncio.run(timed(1, asyncio.sleep(0, result=7))) == 7


def test_chat_linking_takes_capitalised_titles_and_keeps_dialogue_linking_as_it_was(kg):
    chat, dialogue = TextEntityLinker(kg, items=True), TextEntityLinker(kg)
    names = lambda linker, text: [kg.names[e] for e in linker.link(text)]  # noqa: E731
    assert names(chat, "I loved Inception! Any thriller?") == ["Inception", "Thriller (genre)"]  # not the film 'Loved'
    assert names(dialogue, "I loved Inception! Any thriller?") == ["Thriller (genre)"]  # ReDial links movies by @id
    assert "Titanic (1997 film)" in names(chat, "something like the dark knight or Titanic")
    assert "The Dark Knight (film)" in names(chat, "something like the dark knight or Titanic")  # several words: any case


def test_a_conversation_becomes_a_recommender_turn_with_the_users_emotions(kg):
    linker = TextEntityLinker(kg, items=True)
    messages = [{"role": "system", "content": "You recommend movies."},
                {"role": "user", "content": "I loved Inception"},
                {"role": "assistant", "content": "Have you seen Titanic?"},
                {"role": "user", "content": "Yes, too long. Inception again?"}]
    turn = conversation_turn(messages, linker)
    inception, titanic = kg.names.index("Inception"), kg.names.index("Titanic (1997 film)")
    assert turn["context"] == [m["content"] for m in messages[1:]] and turn["turn"] == 3
    assert turn["context_roles"] == [SEEKER, RECOMMENDER, SEEKER]
    assert turn["entities"] == [titanic, inception] and turn["entity_turns"] == [1, 2]  # latest mention last
    first, second = [1.0] + [0.0] * 8, [0.0] * 4 + [1.0] + [0.0] * 4
    mentioned = entity_emotions(turn, {(0, 0): first, (0, 2): second}, RecConfig(max_entities=8))
    # the recommender's Titanic takes the user's reply's emotion; Inception its latest (second) mention's
    assert mentioned == {"entities": [titanic, inception], "entity_emotions": [second, second], "entity_by_seeker": [0, 1]}


def test_an_untrained_run_names_the_command(tmp_path):
    with pytest.raises(NotTrained, match=rf"ecr-ray run --config tiny --run-dir {tmp_path}"):
        load_run(str(tmp_path))


def test_every_openai_request_field_is_accepted_and_documented():
    from openai.types.chat.completion_create_params import CompletionCreateParamsBase

    from ecr_ray.config import REPO_ROOT
    from ecr_ray.serving.api import FIELDS, HONOURED, IGNORED, REFUSED

    openai_fields = set(CompletionCreateParamsBase.__annotations__)
    assert openai_fields <= set(FIELDS) and openai_fields <= set(ChatRequest.model_fields)
    page = (REPO_ROOT / "docs" / "serving.md").read_text()
    for name, (what, _) in FIELDS.items():
        assert what in (HONOURED, IGNORED, REFUSED) and f"| `{name}` | {what} |" in page, name


def test_text_parts_roles_and_what_is_refused():
    parts = [{"type": "text", "text": "I loved"}, {"type": "text", "text": "Inception"}]
    assert _check([{"role": "developer", "content": "be brief"}, {"role": "user", "content": parts}]) == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "I loved\nInception"}]
    with pytest.raises(BadRequest, match="'image_url' part: only text parts") as err:
        _check([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}])
    assert err.value.param == "messages[0].content[0]"
    user = [{"role": "user", "content": "hi"}]
    for extra, param in [({"logprobs": True}, "logprobs"), ({"tools": [{"type": "function"}]}, "tools"),
                         ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format.type"),
                         ({"logit_bias": {"50256": -100}}, "logit_bias"), ({"modalities": ["text", "audio"]}, "modalities")]:
        with pytest.raises(BadRequest) as err:
            ChatRequest(messages=user, **extra).refuse_unsupported()
        assert err.value.param == param and err.value.status == 400
    fine = ChatRequest(messages=user, logprobs=False, tools=[], metadata={"a": "b"}, store=True, modalities=["text"],
                       response_format={"type": "json_object"}, service_tier="auto", reasoning_effort="low")
    fine.refuse_unsupported()
    assert fine.as_json and fine.decoding() == {}
    options = ChatRequest(messages=user, max_tokens=9, max_completion_tokens=7, temperature=0, seed=3, stop="\n",
                          frequency_penalty=1.0, presence_penalty=-1.0).decoding()
    assert options == {"max_new_tokens": 7, "temperature": 0, "seed": 3, "stop": ["\n"], "repetition_penalty": 1.25}
    with pytest.raises(BadRequest, match="up to 4"):
        ChatRequest(messages=user, stop=["a", "b", "c", "d", "e"]).decoding()


def test_streamed_json_content_is_the_plain_answers_json():
    import json

    from ecr_ray.serving.api import json_content, json_pieces

    found = {"items": [{"title": 'The "Matrix" (1999)'}, {"title": "Heat"}]}
    before, after = json_pieces(found)
    pieces = ["I think ", 'you\'d like "it"', "\nreally"]
    streamed = before + "".join(json.dumps(p)[1:-1] for p in pieces) + after
    assert streamed == json_content("".join(pieces), found)
    assert json.loads(streamed) == {"response": "I think you'd like \"it\"\nreally", "recommendations": ['The "Matrix" (1999)', "Heat"]}


def test_chat_help_lists_only_what_applies(capsys):
    from ecr_ray.cli import main

    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--run-dir", "--set", "--top-k"))
    assert not any(flag in out for flag in ("--config", "--force", "--split-file"))


def test_the_continuous_batcher_answers_concurrent_requests_as_if_alone_and_drops_a_cancelled_one():
    import dataclasses

    from ecr_ray.config import DecodingConfig, GeneratorConfig
    from ecr_ray.gen.generate import ChatBatch, ResponseGenerator
    from ecr_ray.serving.batching import ContinuousBatcher

    smol = dataclasses.replace(GeneratorConfig(), max_length=256)
    generator = ResponseGenerator(None, smol, DecodingConfig(max_new_tokens=12), retrieval=False)
    rows = [{"context": f"User: {t}", "title": "Heat", "knowledge": {"entities": [], "triples": []}}
            for t in ("I loved Inception", "Any comedies?", "Something scary please", "A film for kids")]
    options = [None, {"max_new_tokens": 4}, {"stop": ["."]}, None]
    alone = [generator.reply(r, o) for r, o in zip(rows, options)]
    steps = []

    class Counted(ChatBatch):  # how many requests each step decodes
        def step(self):
            steps.append(self.in_flight)
            return super().step()

    batcher = ContinuousBatcher(lambda: Counted(generator), max_batch=3)

    async def turn(i: int, delay: float) -> dict:
        await asyncio.sleep(delay)
        *pieces, end = [out async for out in batcher.stream(rows[i], options[i])]
        return {"text": "".join(pieces), **end}

    async def cancelled() -> int:
        got = 0
        async for _ in batcher.stream(rows[0], None):
            got += 1
            if got == 2:
                break  # a client that goes away after two pieces
        return got

    async def main():
        return await asyncio.gather(*(turn(i, 0.05 * i) for i in range(4)), cancelled())

    *answers, got = asyncio.run(main())
    assert answers == alone and got == 2
    assert max(steps) == 3  # decoded together, never more than max_batch at once


def test_the_continuous_batcher_joins_a_replys_pieces_after_the_first_within_its_interval():
    import dataclasses

    from ecr_ray.config import DecodingConfig, GeneratorConfig
    from ecr_ray.gen.generate import ChatBatch, ResponseGenerator
    from ecr_ray.serving.batching import ContinuousBatcher

    generator = ResponseGenerator(None, dataclasses.replace(GeneratorConfig(), max_length=256), DecodingConfig(max_new_tokens=12),
                                  retrieval=False)
    row = {"context": "User: I loved Inception", "title": "Heat", "knowledge": {"entities": [], "triples": []}}
    alone = list(generator.stream(row))

    async def streamed(interval_s: float) -> list:
        batcher = ContinuousBatcher(lambda: ChatBatch(generator), max_batch=2, interval_s=interval_s)
        return [out async for out in batcher.stream(row, None)]

    every, joined = asyncio.run(streamed(0.0)), asyncio.run(streamed(60.0))
    assert every == alone and len(alone) > 3  # every token's piece on its own
    assert joined == [alone[0], "".join(alone[1:-1]), alone[-1]]  # the first piece at once, the rest with the end
