"""Batch generation: prompts (context, item, knowledge) -> responses, left-padded batches.

`ResponseGenerator` is the Ray Data UDF (the model loads once per actor); `respond` serves plain
loops and the Serve deployment, `stream` the chat API's streaming.
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

    def stream(self, row: dict):
        """One response as it is decoded: text pieces (what a chat server streams)."""
        import threading

        import torch
        from transformers import TextIteratorStreamer

        inputs, _, _ = self._inputs([row])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)

        def run():
            with torch.no_grad():
                self.model.generate(**inputs, **self._decoding(), streamer=streamer)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        first = True
        for piece in streamer:
            if first:  # respond() strips the response: so does the stream
                piece, first = piece.lstrip(), not piece.strip()
            if piece:
                yield piece
        thread.join()

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

    def _decoding(self) -> dict:
        d = self.decoding
        kwargs = {"max_new_tokens": d.max_new_tokens, "do_sample": d.do_sample, "pad_token_id": self.tokenizer.pad_token_id,
                  "eos_token_id": self.tokenizer.eos_token_id}
        if d.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = d.no_repeat_ngram_size
        if d.do_sample:
            kwargs.update(temperature=d.temperature, top_p=d.top_p)
        return kwargs

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [{**r, "knowledge": {"entities": r["entities"], "triples": r["triples"]}} for r in batch.to_pylist()]
        responses, truncated = self.respond(rows)
        batch = batch.append_column("response", pa.array(responses, pa.string()))
        return batch.append_column("prompt_truncated", pa.array(truncated, pa.bool_()))
