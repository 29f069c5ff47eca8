"""Token-by-token decoding of a left-padded batch in which every row keeps its own settings.

`generate()` takes one set of decoding options per call, re-scans the whole sequence for repeated
n-grams at every step and keeps finished rows in the batch. Serving batches concurrent chat requests
(each with its own temperature, length, seed and stop strings), so this loop decodes them together:
one forward per step over the unfinished rows' KV cache, the n-gram ban kept up to date as tokens
come, finished rows dropped from the cache. Greedy output equals `generate()`'s with the same
repetition penalty and n-gram size (tested).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class RowDecoding:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None


class NGramBan:
    """Tokens that would repeat an n-gram of the sequence so far (`no_repeat_ngram_size`), updated per token."""

    def __init__(self, tokens: list[int], n: int):
        self.n, self.tokens, self.next = n, list(tokens), {}
        for i in range(len(tokens) - n + 1):
            self._add(i)

    def _add(self, start: int) -> None:
        gram = self.tokens[start:start + self.n]
        self.next.setdefault(tuple(gram[:-1]), set()).add(gram[-1])

    def push(self, token: int) -> None:
        self.tokens.append(token)
        if len(self.tokens) >= self.n:
            self._add(len(self.tokens) - self.n)

    def banned(self) -> set[int]:
        if len(self.tokens) < self.n - 1:
            return set()
        return self.next.get(tuple(self.tokens[len(self.tokens) - self.n + 1:]), set())


class BatchDecoder:
    """`steps()` yields, per decoding step, one new token id per row (None for a row that has finished:
    end of sequence, its token limit, or `finish(row)` by the caller, e.g. on a stop string)."""

    def __init__(self, model, input_ids, attention_mask, rows: list[RowDecoding], eos_token_id: int, no_repeat_ngram_size: int = 0):
        import torch

        self.model, self.rows, self.eos = model, rows, eos_token_id
        self.ids, self.mask = input_ids, attention_mask
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]
        self.seen = [set(p) for p in prompts]  # what the repetition penalty weighs down
        self.bans = [NGramBan(p, no_repeat_ngram_size) for p in prompts] if no_repeat_ngram_size else None
        self.made = [0] * len(rows)
        self.done = [r.max_new_tokens <= 0 for r in rows]
        self.random = [torch.Generator().manual_seed(r.seed) if r.seed is not None else None for r in rows]

    def finish(self, row: int) -> None:
        self.done[row] = True

    def steps(self) -> Iterator[list[int | None]]:
        import torch
        from transformers import DynamicCache

        live = [i for i, d in enumerate(self.done) if not d]  # rows in the cache, in its order
        if not live:
            return
        cache, mask = DynamicCache(config=self.model.config), self.mask[live]
        step_ids, positions = self.ids[live], (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            while live:
                logits = self.model(input_ids=step_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                                    use_cache=True, logits_to_keep=1).logits[:, -1, :].float().cpu()  # choosing is cheap: on the CPU
                tokens = [self._choose(row, scores) for row, scores in zip(live, logits)]
                out: list[int | None] = [None] * len(self.rows)
                for row, token in zip(live, tokens):
                    out[row], self.made[row] = token, self.made[row] + 1
                    self.seen[row].add(token)
                    if self.bans:
                        self.bans[row].push(token)
                    if token == self.eos or self.made[row] >= self.rows[row].max_new_tokens:
                        self.done[row] = True
                yield out  # the caller may finish rows here
                keep = [k for k, row in enumerate(live) if not self.done[row]]
                if len(keep) < len(live):
                    index = torch.tensor(keep, dtype=torch.long, device=mask.device)
                    cache.batch_select_indices(index)
                    mask, positions, tokens = mask[index], positions[index], [tokens[k] for k in keep]
                    live = [live[k] for k in keep]
                step_ids = torch.tensor(tokens, dtype=torch.long, device=mask.device).unsqueeze(1)
                mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
                positions = positions[:, -1:] + 1

    def _choose(self, row: int, scores) -> int:
        """One row's next token, after the processors `generate()` applies in its order: repetition
        penalty, n-gram ban, temperature, top-p."""
        import torch

        r = self.rows[row]
        if r.repetition_penalty != 1.0 and self.seen[row]:
            seen = torch.tensor(sorted(self.seen[row]))
            picked = scores[seen]
            scores[seen] = torch.where(picked < 0, picked * r.repetition_penalty, picked / r.repetition_penalty)
        if self.bans and (banned := self.bans[row].banned()):
            scores[list(banned)] = -float("inf")
        if r.temperature <= 0:
            return int(scores.argmax())
        probs = torch.softmax(scores / r.temperature, dim=-1)
        if r.top_p < 1.0:
            ordered, order = probs.sort(descending=True)
            outside = ordered.cumsum(0) - ordered > r.top_p  # keep the smallest head whose mass reaches top_p
            probs[order[outside]] = 0.0
        return int(torch.multinomial(probs, 1, generator=self.random[row]))
