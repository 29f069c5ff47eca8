"""Batch generation: prompts (context, item, knowledge) -> responses, left-padded batches.

`ResponseGenerator` is the Ray Data UDF (the model loads once per actor); `respond` serves plain
loops, `reply` and `stream` the chat API (a request's decoding options, stop strings, token counts);
`ChatBatch` decodes concurrent chat requests together as they come and go.
"""
from __future__ import annotations

import dataclasses
import functools
import zlib

import pyarrow as pa

from ecr_ray.config import Bf16, DecodingConfig, GeneratorConfig, from_dict
from ecr_ray.gen.decode import BatchDecoder, RowDecoding
from ecr_ray.gen.retrieval import Grounding


class ResponseGenerator:
    def __init__(self, model_dir: str | None, generator: GeneratorConfig, decoding: DecodingConfig, retrieval: bool,
                 allow_download: bool = False, threads: int = 1, kg_dir: str | None = None, bf16: Bf16 = False):
        """`model_dir`: a trained generator (a folder or a run directory URI, fetched here); None: `generator`'s base untuned.
        `kg_dir`: the KG that candidates (`decoding.candidates` > 1) are checked against for unsupported entities.
        `bf16`: bfloat16 weights (`decoding.batch_bf16`, for batches; "auto": where bf16 is native)."""
        import torch

        from ecr_ray.data.kg import load_kg
        from ecr_ray.gen.model import context_limit, load_base, load_generator
        from ecr_ray.gen.prompts import PromptBuilder
        from ecr_ray.models import torch_device
        from ecr_ray.precision import use_bf16
        from ecr_ray.rundir import fetch

        torch.set_num_threads(threads)
        if model_dir is None:  # the base model without fine-tuning
            self.model, self.tokenizer = load_base(generator, allow_download)
            self.model.eval()
        else:
            self.model, self.tokenizer, meta = load_generator(fetch(model_dir), allow_download)  # a folder or a run directory URI
            generator = from_dict(GeneratorConfig, meta["generator"])
            if hasattr(self.model, "merge_and_unload"):  # a LoRA adapter folded into the weights: no extra products per layer
                self.model = self.model.merge_and_unload()
        self.model.to(torch_device(), **({"dtype": torch.bfloat16} if use_bf16(bf16, torch_device()) else {}))
        self.prompts = PromptBuilder(self.tokenizer, generator.max_length, generator.response_tokens, retrieval)
        self.decoding = decoding
        self.grounding = Grounding(load_kg(kg_dir)) if kg_dir and decoding.candidates > 1 else None
        # a prompt leaves room for the response within the model's context
        self.budget = min(generator.max_length - generator.response_tokens, (context_limit(self.model) or 1 << 30) - decoding.max_new_tokens)

    def respond(self, rows: list[dict]) -> tuple[list[str], list[bool]]:
        """rows {context, title, knowledge} -> (one response each, whether its prompt was truncated).
        With `decoding.candidates` > 1 each prompt is decoded that many times and the best grounded kept (with
        `decoding.more_candidates`, more samples for the prompts whose candidates all miss the item);
        with `decoding.title_fallback` a response that does not name the item is decoded again from its title.
        (`decoding.trim_unsupported`, the filter, is applied by the Ray Data call, which keeps both texts.)"""
        from ecr_ray.eval.text_metrics import mentions

        prompts, truncated = zip(*map(self.prompt, rows))
        k, more = self.decoding.candidates, self.decoding.more_candidates
        texts = self._decode([(p, self.naming(self.candidate(p, c), row["title"]), []) for p, row in zip(prompts, rows) for c in range(k)])
        groups = [texts[i * k:(i + 1) * k] for i in range(len(rows))]
        missed = [i for i, row in enumerate(rows) if more and not any(mentions(t, row["title"]) for t in groups[i])]
        extra = self._decode([(prompts[i], self.naming(self.candidate(prompts[i], c), rows[i]["title"]), []) for i in missed
                              for c in range(k, k + more)])
        for j, i in enumerate(missed):
            groups[i] += extra[j * more:(j + 1) * more]
        chosen = [max(group, key=lambda text, row=row: grounding(text, row, self.grounding)) for group, row in zip(groups, rows)]
        missing = [i for i, row in enumerate(rows) if self.decoding.title_fallback and not mentions(chosen[i], row["title"])]
        starts = [self.tokenizer.encode(rows[i]["title"], add_special_tokens=False) for i in missing]
        for i, text in zip(missing, self._decode([(prompts[i], self.settings(), start) for i, start in zip(missing, starts)])):
            chosen[i] = text
        return chosen, list(truncated)

    def _decode(self, requests: list[tuple[list[int], RowDecoding, list[int]]]) -> list[str]:
        """(prompt, decoding, the response's first tokens) -> the responses, decoded in one batch."""
        decoder = self.decoder()
        keys = [decoder.add(prompt + start, settings) for prompt, settings, start in requests]
        tokens = {k: list(start) for k, (_, _, start) in zip(keys, requests)}
        while decoder.in_flight:
            for key, token in decoder.step().items():
                tokens[key].append(token)
        return [self.tokenizer.decode(tokens[k], skip_special_tokens=True).strip() for k in keys]

    def candidate(self, prompt: list[int], index: int) -> RowDecoding:
        """The decoding of a prompt's `index`-th candidate: the config's first (seeded by the prompt when it samples),
        then seeded samples."""
        if index == 0:
            first = self.settings()
            return dataclasses.replace(first, seed=zlib.crc32(bytes(str(prompt), "utf-8"))) if first.temperature > 0 else first
        d = self.decoding
        return RowDecoding(max_new_tokens=d.max_new_tokens, temperature=d.temperature, top_p=d.top_p, repetition_penalty=d.repetition_penalty,
                           penalty_prompt=d.repetition_penalty_prompt, seed=zlib.crc32(bytes(str(prompt), "utf-8")) + index)  # the same prompt samples the same candidates

    def reply(self, row: dict, options: dict | None = None) -> dict:
        """One response to a chat request: {text, finish_reason, prompt_tokens, completion_tokens}.
        `options` override the config's decoding for this request (`settings`)."""
        *pieces, end = self.stream(row, options)
        return {"text": "".join(pieces), **end}

    def stream(self, row: dict, options: dict | None = None):
        """One response as it is decoded: text pieces (what a chat server streams), then one dict
        {finish_reason, prompt_tokens, completion_tokens, title_put}."""
        chat = ChatBatch(self)
        key = chat.add(row, options)
        while chat.in_flight:
            piece, end = chat.step()[key]
            if piece:
                yield piece
            if end:
                yield end

    def prompt(self, row: dict) -> tuple[list[int], bool]:
        """A row's prompt ids, and whether it was truncated to fit."""
        before = self.prompts.truncated
        ids = self.prompts.prompt(row["context"], row["title"], row["knowledge"], self.budget)
        return ids, self.prompts.truncated > before

    def decoder(self) -> BatchDecoder:
        d = self.decoding
        ends, period = sentence_ends(self.tokenizer) if d.name_item else (frozenset(), None)
        return BatchDecoder(self.model, self.tokenizer.eos_token_id, d.no_repeat_ngram_size, d.ngram_ban_prompt, ends, period)

    def naming(self, settings: RowDecoding, title: str) -> RowDecoding:
        """`settings` with the item's title to put in when the reply has not said it (`decoding.name_item`)."""
        if not self.decoding.name_item:
            return settings
        forms = [self.tokenizer.encode(f" {title}", add_special_tokens=False), self.tokenizer.encode(title, add_special_tokens=False)]
        return dataclasses.replace(settings, title=tuple(map(tuple, forms)))

    def settings(self, options: dict | None = None) -> RowDecoding:
        """A row's decoding: the config's, with a request's `options` over it (max_new_tokens at most the
        config's; temperature 0 is greedy, above 0 samples; top_p, seed, repetition_penalty)."""
        d, o = self.decoding, options or {}
        temperature = o.get("temperature", d.temperature if d.do_sample else 0.0)
        return RowDecoding(max_new_tokens=min(o.get("max_new_tokens", d.max_new_tokens), d.max_new_tokens), temperature=temperature,
                           top_p=o.get("top_p", d.top_p) if temperature > 0 else 1.0, repetition_penalty=o.get("repetition_penalty", d.repetition_penalty),
                           penalty_prompt=d.repetition_penalty_prompt, seed=o.get("seed"))

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [{**r, "knowledge": {"entities": r["entities"], "triples": r["triples"]}} for r in batch.to_pylist()]
        untrimmed, truncated = self.respond(rows)
        responses = untrimmed
        if self.decoding.trim_unsupported and self.grounding:
            responses = [trimmed(text, row, self.grounding) for text, row in zip(untrimmed, rows)]
        batch = batch.append_column("response", pa.array(responses, pa.string()))
        batch = batch.append_column("untrimmed", pa.array(untrimmed, pa.string()))  # before the filter: what the figures headline
        return batch.append_column("prompt_truncated", pa.array(truncated, pa.bool_()))


@functools.cache
def sentence_ends(tokenizer) -> tuple[frozenset[int], int | None]:
    """The tokens whose text ends a sentence (., ! or ?, closing quotes aside), and the one that is just '.'."""
    ends = frozenset(i for i in range(len(tokenizer)) if tokenizer.decode([i]).strip().rstrip("\"')").endswith((".", "!", "?")))
    period = tokenizer.encode(".", add_special_tokens=False)
    return ends, period[0] if len(period) == 1 else None


def grounding(response: str, row: dict, kg: Grounding | None = None) -> tuple[bool, int, int]:
    """How well a response keeps to its prompt: (it names the item, minus the KG entities it names that
    the prompt does not support (with `kg`), how many of the knowledge's entity names it holds). `max`
    keeps the first of equals, so the configured decoding wins ties."""
    from ecr_ray.eval.text_metrics import mentions

    names = {*row["knowledge"]["entities"], *(t[-1] for t in row["knowledge"]["triples"])}
    unsupported = len(kg.named(response, row)[1]) if kg else 0
    return mentions(response, row["title"]), -unsupported, sum(mentions(response, n) for n in names)


def trimmed(response: str, row: dict, kg: Grounding) -> str:
    """`response` without the sentences that name a KG entity its prompt does not support (`Grounding`), except a
    sentence naming the item, which stays whatever else it says; a response none of whose sentences would stay
    is kept whole rather than emptied."""
    from ecr_ray.eval.text_metrics import mentions
    from ecr_ray.gen.reviews import split_sentences

    kept = [s for s in split_sentences(response, 1) if mentions(s, row["title"]) or not kg.named(s, row)[1]]
    return " ".join(kept) if kept else response


class ChatBatch:
    """Chat requests decoded together, joining and leaving between steps (continuous batching): `add` a
    request, `step()` -> {key: (the text it gained, maybe "", and once it has ended the dict of
    `ResponseGenerator.stream`, else None)} for every request in flight."""

    def __init__(self, generator: ResponseGenerator):
        self.generator, self.decoder, self.requests = generator, generator.decoder(), {}

    @property
    def in_flight(self) -> int:
        return len(self.requests)

    def add(self, row: dict, options: dict | None = None) -> int:
        prompt, _ = self.generator.prompt(row)
        settings = self.generator.naming(self.generator.settings(options), row["title"])
        key = self.decoder.add(prompt, settings)
        self.requests[key] = (_Text(self.generator.tokenizer, (options or {}).get("stop")), settings.max_new_tokens, len(prompt))
        return key

    def cancel(self, key: int) -> None:
        self.decoder.finish(key)
        self.requests.pop(key, None)

    def step(self) -> dict[int, tuple[str, dict | None]]:
        out = {}
        tokens = self.decoder.step()
        for key, (text, limit, prompt_tokens) in list(self.requests.items()):
            piece = text.add(tokens[key]) if key in tokens else ""
            if text.cut.hit:
                self.decoder.finish(key)
            end = None
            if key not in self.decoder.rows or self.decoder.rows[key].done:
                piece += text.flush()
                made = text.tokens
                ended = text.cut.hit or len(made) < limit or (made and made[-1] == self.generator.tokenizer.eos_token_id)
                end = {"finish_reason": "stop" if ended else "length", "prompt_tokens": prompt_tokens, "completion_tokens": len(made),
                       "title_put": getattr(self.decoder.rows.get(key), "put", False)}  # decoding.name_item put the title in
                del self.requests[key]
            out[key] = (piece, end)
        return out


class _Text:
    """One response's tokens as text: each new token adds the text it completes (a token ending inside
    a multi-byte character waits for the next), cut at the first stop string, stripped (trailing space
    waits for the text after it)."""

    def __init__(self, tokenizer, stops: list[str] | None):
        self.tokenizer, self.tokens, self.shown, self.space, self.cut = tokenizer, [], 0, "", StopCut(stops)

    def add(self, token: int) -> str:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()
        if text.endswith("\ufffd"):
            return ""
        piece, self.shown = text[self.shown:], len(text)
        out = self.space + self.cut.feed(piece)
        kept = out.rstrip()
        self.space = out[len(kept):]
        return kept

    def flush(self) -> str:
        return (self.space + self.cut.flush()).rstrip()


class StopCut:
    """Text up to the first stop string, fed piece by piece: a piece's tail that may begin a stop
    string is held back until the next piece shows whether it does."""

    def __init__(self, stops: list[str] | None):
        self.stops, self.held, self.hit = stops or [], "", False

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        text = self.held + piece
        found = [text.find(s) for s in self.stops if s in text]
        if found:
            self.hit, self.held = True, ""
            return text[: min(found)]
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep:]
        return text[: len(text) - keep]

    def flush(self) -> str:
        rest, self.held = self.held, ""
        return rest
