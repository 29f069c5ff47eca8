"""Batch generation: prompts (context, item, knowledge) -> responses, left-padded batches.

`ResponseGenerator` is the Ray Data UDF (the model loads once per actor); `respond` serves plain
loops, `reply`, `stream` and `stream_batch` the chat API (concurrent requests decoded together, each
with its own decoding options, stop strings and token counts).
"""
from __future__ import annotations

import pyarrow as pa

from ecr_ray.config import DecodingConfig, GeneratorConfig, from_dict
from ecr_ray.gen.decode import BatchDecoder, RowDecoding


class ResponseGenerator:
    def __init__(self, model_dir: str | None, generator: GeneratorConfig, decoding: DecodingConfig, retrieval: bool,
                 allow_download: bool = False, threads: int = 1):
        """`model_dir`: a trained generator (a folder or a run directory URI, fetched here); None: `generator`'s base untuned."""
        import torch

        from ecr_ray.gen.model import context_limit, load_base, load_generator
        from ecr_ray.gen.prompts import PromptBuilder
        from ecr_ray.models import torch_device
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
        self.model.to(torch_device())
        self.tokenizer.padding_side = "left"
        self.prompts = PromptBuilder(self.tokenizer, generator.max_length, generator.response_tokens, retrieval)
        self.decoding = decoding
        # a prompt leaves room for the response within the model's context
        self.budget = min(generator.max_length - generator.response_tokens, (context_limit(self.model) or 1 << 30) - decoding.max_new_tokens)

    def respond(self, rows: list[dict]) -> tuple[list[str], list[bool]]:
        """rows {context, title, knowledge} -> (one response each, whether its prompt was truncated)."""
        inputs, _, truncated = self._inputs(rows)
        decoder = self._decoder(inputs, [self._settings()] * len(rows))
        tokens = [[] for _ in rows]
        for step in decoder.steps():
            for made, token in zip(tokens, step):
                if token is not None:
                    made.append(token)
        return [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens], truncated

    def reply(self, row: dict, options: dict | None = None) -> dict:
        """One response to a chat request: {text, finish_reason, prompt_tokens, completion_tokens}.
        `options` override the config's decoding for this request (`_settings`)."""
        *pieces, end = self.stream(row, options)
        return {"text": "".join(pieces), **end}

    def stream(self, row: dict, options: dict | None = None):
        """One response as it is decoded: text pieces (what a chat server streams), then one dict
        {finish_reason, prompt_tokens, completion_tokens}."""
        for (out,) in self.stream_batch([row], [options]):
            if out:
                yield out

    def stream_batch(self, rows: list[dict], options: list[dict | None]):
        """Concurrent requests decoded together. Yields per step one entry per row: the text it gained
        (maybe ""), then once the dict of `stream`, then None."""
        inputs, _, _ = self._inputs(rows)
        settings = [self._settings(o) for o in options]
        decoder = self._decoder(inputs, settings)
        texts = [_Text(self.tokenizer, (o or {}).get("stop")) for o in options]
        ended = [False] * len(rows)
        for step in decoder.steps():
            pieces = [None if ended[i] else "" if token is None else texts[i].add(token) for i, token in enumerate(step)]
            finals = {}
            for i, text in enumerate(texts):
                if not ended[i] and text.cut.hit:
                    decoder.finish(i)
                if not ended[i] and decoder.done[i]:
                    pieces[i] += text.flush()
                    finals[i] = self._finish(inputs, i, text, settings[i].max_new_tokens)
            yield pieces
            if finals:
                yield [finals.get(i, None if ended[i] else "") for i in range(len(rows))]
                for i in finals:
                    ended[i] = True

    def _finish(self, inputs: dict, row: int, text: _Text, limit: int) -> dict:
        """Why decoding ended ("length" when cut by the token limit) and the token counts."""
        tokens = text.tokens
        ended = text.cut.hit or len(tokens) < limit or (tokens and tokens[-1] == self.tokenizer.eos_token_id)
        return {"finish_reason": "stop" if ended else "length", "prompt_tokens": int(inputs["attention_mask"][row].sum()),
                "completion_tokens": len(tokens)}

    def _decoder(self, inputs: dict, settings: list[RowDecoding]) -> BatchDecoder:
        return BatchDecoder(self.model, inputs["input_ids"], inputs["attention_mask"], settings, self.tokenizer.eos_token_id,
                            self.decoding.no_repeat_ngram_size)

    def _inputs(self, rows: list[dict]):
        """Left-padded prompt ids and mask, the padded width, and which prompts were truncated."""
        import torch

        ids, truncated = [], []
        for r in rows:
            before = self.prompts.truncated
            ids.append(self.prompts.prompt(r["context"], r["title"], r["knowledge"], self.budget))
            truncated.append(self.prompts.truncated > before)
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
        return {"input_ids": input_ids, "attention_mask": mask}, width, truncated

    def _settings(self, options: dict | None = None) -> RowDecoding:
        """A row's decoding: the config's, with a request's `options` over it (max_new_tokens at most the
        config's; temperature 0 is greedy, above 0 samples; top_p, seed, repetition_penalty)."""
        d, o = self.decoding, options or {}
        temperature = o.get("temperature", d.temperature if d.do_sample else 0.0)
        return RowDecoding(max_new_tokens=min(o.get("max_new_tokens", d.max_new_tokens), d.max_new_tokens), temperature=temperature,
                           top_p=o.get("top_p", d.top_p) if temperature > 0 else 1.0, repetition_penalty=o.get("repetition_penalty", 1.0),
                           seed=o.get("seed"))

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [{**r, "knowledge": {"entities": r["entities"], "triples": r["triples"]}} for r in batch.to_pylist()]
        responses, truncated = self.respond(rows)
        batch = batch.append_column("response", pa.array(responses, pa.string()))
        return batch.append_column("prompt_truncated", pa.array(truncated, pa.bool_()))


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
