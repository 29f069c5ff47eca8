"""Batch generation: prompts (context, item, knowledge) -> responses, left-padded batches.

`ResponseGenerator` is the Ray Data UDF (the model loads once per actor); `respond` serves plain
loops, `reply` and `stream` the chat API (a request's decoding options, stop strings, token counts).
"""
from __future__ import annotations

import pyarrow as pa

from ecr_ray.config import DecodingConfig, GeneratorConfig, from_dict


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
        self.model.to(torch_device())
        self.tokenizer.padding_side = "left"
        self.prompts = PromptBuilder(self.tokenizer, generator.max_length, generator.response_tokens, retrieval)
        self.decoding = decoding
        # a prompt leaves room for the response within the model's context
        self.budget = min(generator.max_length - generator.response_tokens, (context_limit(self.model) or 1 << 30) - decoding.max_new_tokens)

    def respond(self, rows: list[dict]) -> tuple[list[str], list[bool]]:
        """rows {context, title, knowledge} -> (one response each, whether its prompt was truncated)."""
        import torch

        inputs, width, truncated = self._inputs(rows)
        with torch.no_grad():
            out = self.model.generate(**inputs, **self._decoding())
        return [self.tokenizer.decode(o[width:], skip_special_tokens=True).strip() for o in out], truncated

    def reply(self, row: dict, options: dict | None = None) -> dict:
        """One response to a chat request: {text, finish_reason, prompt_tokens, completion_tokens}.
        `options` override the config's decoding for this request (`_decoding`)."""
        import torch

        inputs, width, _ = self._inputs([row])
        decoding = self._decoding(options)
        with torch.no_grad():
            out = self.model.generate(**inputs, **decoding)[0, width:]
        cut = StopCut((options or {}).get("stop"))
        text = (cut.feed(self.tokenizer.decode(out, skip_special_tokens=True)) + cut.flush()).strip()
        return {"text": text, **self._finish(inputs, out, decoding["max_new_tokens"], cut.hit)}

    def stream(self, row: dict, options: dict | None = None):
        """One response as it is decoded: text pieces (what a chat server streams), then one dict
        {finish_reason, prompt_tokens, completion_tokens}."""
        import threading

        import torch
        from transformers import TextIteratorStreamer

        inputs, width, _ = self._inputs([row])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result, decoding = {}, self._decoding(options)

        def run():
            with torch.no_grad():
                result["out"] = self.model.generate(**inputs, **decoding, streamer=streamer)[0, width:]

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        cut, first = StopCut((options or {}).get("stop")), True
        for piece in streamer:
            if first:  # reply() strips the response: so does the stream
                piece, first = piece.lstrip(), not piece.strip()
            if piece := cut.feed(piece):
                yield piece
        thread.join()
        if rest := cut.flush().rstrip():
            yield rest
        yield self._finish(inputs, result["out"], decoding["max_new_tokens"], cut.hit)

    def _finish(self, inputs: dict, out, limit: int, stopped: bool) -> dict:
        """Why decoding ended ("length" when cut by the token limit) and the token counts."""
        eos = self.tokenizer.eos_token_id
        ended = stopped or len(out) < limit or (len(out) and int(out[-1]) == eos)
        return {"finish_reason": "stop" if ended else "length", "prompt_tokens": int(inputs["attention_mask"].sum()),
                "completion_tokens": len(out)}

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

    def _decoding(self, options: dict | None = None) -> dict:
        """generate() arguments: the config's decoding, with a request's `options` over it (max_new_tokens
        at most the config's; temperature 0 is greedy, above 0 samples; top_p, stop, repetition_penalty).
        Called once per generation: with a `seed`, it seeds the sampling that follows."""
        import torch

        d, o = self.decoding, options or {}
        temperature = o.get("temperature", d.temperature if d.do_sample else 0.0)
        kwargs = {"max_new_tokens": min(o.get("max_new_tokens", d.max_new_tokens), d.max_new_tokens), "do_sample": temperature > 0,
                  "pad_token_id": self.tokenizer.pad_token_id, "eos_token_id": self.tokenizer.eos_token_id}
        if d.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = d.no_repeat_ngram_size
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=o.get("top_p", d.top_p))
            if "seed" in o:
                torch.manual_seed(o["seed"])
        if o.get("stop"):
            kwargs.update(stop_strings=o["stop"], tokenizer=self.tokenizer)
        if "repetition_penalty" in o:
            kwargs["repetition_penalty"] = o["repetition_penalty"]
        return kwargs

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [{**r, "knowledge": {"entities": r["entities"], "triples": r["triples"]}} for r in batch.to_pylist()]
        responses, truncated = self.respond(rows)
        batch = batch.append_column("response", pa.array(responses, pa.string()))
        return batch.append_column("prompt_truncated", pa.array(truncated, pa.bool_()))


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
