"""Continuous batch decoding: rows join and leave a running batch between steps, each with its own settings.

`generate()` takes one set of decoding options per call, re-scans the whole sequence for repeated
n-grams at every step and keeps finished rows in the batch. Serving decodes concurrent chat requests
(each with its own temperature, length, seed and stop strings) that arrive at different times, so this
loop keeps one KV cache for every row in flight: a request that arrives is prefilled at the next step
and its cache joined to the others' (left-padded to a common length), a finished row leaves it. The
n-gram ban is kept up to date as tokens come, over the response (or, as generate() does, the prompt
too). Greedy output equals `generate()`'s with the same settings (tested).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass
class RowDecoding:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    penalty_prompt: bool = True  # the penalty weighs the prompt's tokens too (generate()'s); False: the response's only
    seed: int | None = None
    # the item's title as token ids, as it is put mid-text first, then as it may be said: a row that reaches a sentence end
    # (or its end) without having said it gets it next, and goes on from there
    title: tuple[tuple[int, ...], ...] = ()


class NGramBan:
    """Tokens that would repeat an n-gram of the sequence so far (`no_repeat_ngram_size`), updated per
    token; the sequence starts with `prompt` (generate()'s ban) or, with none, at the response."""

    def __init__(self, n: int, prompt: list[int] = ()):
        self.n, self.tokens, self.next = n, [], {}
        for token in prompt:
            self.push(token)

    def push(self, token: int) -> None:
        self.tokens.append(token)
        if len(self.tokens) >= self.n:
            gram = self.tokens[-self.n:]
            self.next.setdefault(tuple(gram[:-1]), set()).add(gram[-1])

    def banned(self) -> set[int]:
        if len(self.tokens) < self.n - 1:
            return set()
        return self.next.get(tuple(self.tokens[len(self.tokens) - self.n + 1:]), set())


class _Row:
    def __init__(self, prompt: list[int], settings: RowDecoding, ngram: int, ngram_prompt: bool):
        import torch

        self.prompt, self.settings, self.made, self.done = prompt, settings, 0, settings.max_new_tokens <= 0
        self.seen = set(prompt) if settings.penalty_prompt else set()  # what the repetition penalty weighs down
        self.ban = NGramBan(ngram, prompt if ngram_prompt else ()) if ngram else None
        self.random = torch.Generator().manual_seed(settings.seed) if settings.seed is not None else None
        self.said, self.tail, self.queue = not settings.title, [], []  # the title said; the last tokens; those still to put
        self.put = False  # the title was put in (the model did not say it by itself)

    def take(self, token: int, eos: int, ends: frozenset[int], period: int | None) -> int:
        """The token this row takes instead of `token` (the model's choice) while its title is unsaid: after a sentence
        end, the title; in place of the end, a period (if anything was said) and the title. Never by the token limit,
        so a shorter limit still gives a prefix of the longer reply."""
        if self.queue:
            token = self.queue.pop(0)
        elif not self.said and (token in ends or token == eos):
            self.queue, self.put = list(self.settings.title[0]), True
            if token == eos:
                token = period if period is not None and self.made else self.queue.pop(0)
        if not self.said:
            self.tail = (self.tail + [token])[-max(map(len, self.settings.title)):]
            self.said = any(tuple(self.tail[-len(t):]) == t for t in self.settings.title)
        return token


class BatchDecoder:
    """`add` rows (prompt token ids) at any time; each `step()` gives every row in flight one new token
    ({key: token}); a row leaves after its end-of-sequence token, at its token limit, or on `finish(key)`."""

    def __init__(self, model, eos_token_id: int, no_repeat_ngram_size: int = 0, ngram_prompt: bool = False,
                 sentence_ends: frozenset[int] = frozenset(), period: int | None = None):
        """`sentence_ends`, `period`: the tokens that end a sentence, and the one put before a title at the end (`RowDecoding.title`)."""
        self.model, self.eos, self.ngram = model, eos_token_id, (no_repeat_ngram_size, ngram_prompt)
        self.ends, self.period = sentence_ends, period
        self.rows: dict[int, _Row] = {}
        self.order: list[int] = []  # the keys of the rows in the cache, in its batch order
        self.waiting: list[int] = []  # added, to be prefilled at the next step
        self.cache = self.mask = self.positions = self.last = None
        self._next_key = 0

    @property
    def in_flight(self) -> int:
        return sum(not r.done for r in self.rows.values())

    def add(self, prompt: list[int], settings: RowDecoding) -> int:
        key, self._next_key = self._next_key, self._next_key + 1
        self.rows[key] = row = _Row(prompt, settings, *self.ngram)
        if not row.done:
            self.waiting.append(key)
        return key

    def finish(self, key: int) -> None:
        if key in self.rows:
            self.rows[key].done = True

    def step(self) -> dict[int, int]:
        """One token for every row in flight: the running rows decode one, the rows added since the
        last step are prefilled (their first token); then finished rows leave the batch."""
        import torch

        self._leave()
        if not self.in_flight:
            return {}
        keys, logits = [], []
        with torch.inference_mode():
            if self.order:
                self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.order), 1)], dim=1)
                out = self.model(input_ids=self.last, attention_mask=self.mask, position_ids=self.positions, past_key_values=self.cache,
                                 use_cache=True, logits_to_keep=1)
                keys, logits = list(self.order), [out.logits[:, -1, :].float().cpu()]  # choosing is cheap: on the CPU
            if self.waiting:
                keys, logits = keys + self.waiting, logits + [self._prefill(self.waiting)]
                self.order, self.waiting = keys, []
        tokens = _choose([self.rows[k] for k in keys], torch.cat(logits))
        tokens = [self.rows[k].take(t, self.eos, self.ends, self.period) for k, t in zip(keys, tokens)]
        device = self.mask.device
        self.last = torch.tensor(tokens, dtype=torch.long, device=device).unsqueeze(1)
        self.positions = self.positions + 1
        for key, token in zip(keys, tokens):
            row = self.rows[key]
            row.made += 1
            row.seen.add(token)
            if row.ban:
                row.ban.push(token)
            row.done = row.done or token == self.eos or row.made >= row.settings.max_new_tokens
        return dict(zip(keys, tokens))

    def _prefill(self, keys: list[int]):
        """The new rows' prompts through the model, left-padded; their cache joins the running one."""
        import torch
        from transformers import DynamicCache

        asked = [tuple(self.rows[k].prompt) for k in keys]
        prompts = list(dict.fromkeys(asked))  # a prompt decoded several times is prefilled once
        width = max(map(len, prompts))
        device = next(self.model.parameters()).device
        ids = torch.tensor([[self.eos] * (width - len(p)) + list(p) for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        cache = _roomy(DynamicCache(config=self.model.config))
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :]
        if len(prompts) < len(keys):  # each row gets its prompt's cache
            where = {p: i for i, p in enumerate(prompts)}
            index = torch.tensor([where[p] for p in asked], device=device)
            cache.batch_select_indices(index)
            mask, logits = mask[index], logits[index]
        positions = mask.sum(-1, keepdim=True) - 1  # the last prompt token's; +1 in step()
        if self.cache is None:
            self.cache, self.mask, self.positions = cache, mask, positions
        else:
            length = max(self.mask.shape[1], width)
            for old, new in zip(self.cache.layers, cache.layers):
                old.keys = torch.cat([_left_pad(old.keys, length), _left_pad(new.keys, length)])
                old.values = torch.cat([_left_pad(old.values, length), _left_pad(new.values, length)])
            self.mask = torch.cat([_left_pad(self.mask, length, dim=1), _left_pad(mask, length, dim=1)])
            self.positions = torch.cat([self.positions, positions])
        return logits.float().cpu()

    def _leave(self) -> None:
        """Finished rows out of the cache (and forgotten)."""
        import torch

        for key in [k for k in self.waiting if self.rows[k].done]:
            self.waiting.remove(key)
        keep = [i for i, k in enumerate(self.order) if not self.rows[k].done]
        for key in [k for k, r in self.rows.items() if r.done]:
            del self.rows[key]
        if len(keep) == len(self.order):
            return
        if not keep:
            self.cache = self.mask = self.positions = self.last = None
            self.order = []
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.positions, self.last = self.mask[index], self.positions[index], self.last[index]
        self.order = [self.order[i] for i in keep]


NUCLEUS_HEAD = 256  # the top-p cut is looked for among this many most likely tokens (a full sort only when they fall short)


def _choose(rows: list[_Row], scores) -> list[int]:
    """The rows' next tokens (`scores`: their logits, a row each), after the processors `generate()` applies in
    its order: repetition penalty, n-gram ban, temperature, top-p. The softmax and the search for the top-p cut
    run for every sampling row at once: a sort of the whole vocabulary per row and step cost more than the model."""
    import torch

    for i, row in enumerate(rows):
        r = row.settings
        if r.repetition_penalty != 1.0 and row.seen:
            seen = torch.tensor(sorted(row.seen))
            picked = scores[i, seen]
            scores[i, seen] = torch.where(picked < 0, picked * r.repetition_penalty, picked / r.repetition_penalty)
        if row.ban and (banned := row.ban.banned()):
            scores[i, list(banned)] = -float("inf")
    tokens = scores.argmax(-1).tolist()
    sampled = [i for i, row in enumerate(rows) if row.settings.temperature > 0]
    if sampled:
        temperature = torch.tensor([rows[i].settings.temperature for i in sampled]).unsqueeze(1)
        probs = torch.softmax(scores[sampled] / temperature, dim=-1)
        heads, orders = probs.topk(min(NUCLEUS_HEAD, probs.shape[-1]), dim=-1)
        for j, i in enumerate(sampled):
            tokens[i] = _sample(probs[j], heads[j], orders[j], rows[i])
    return tokens


def _sample(probs, head, order, row: _Row) -> int:
    """A token drawn from `probs` cut to the smallest head whose mass reaches top_p (`head`, `order`: its most
    likely tokens, sorted)."""
    import torch

    top_p = row.settings.top_p
    if top_p >= 1.0:
        return int(torch.multinomial(probs, 1, generator=row.random))
    before = head.cumsum(0) - head  # the mass before each token
    if before[-1] <= top_p:  # the cut lies beyond the head: sort them all
        head, order = probs.sort(descending=True)
        before = head.cumsum(0) - head
    return int(order[torch.multinomial(head.masked_fill(before > top_p, 0.0), 1, generator=row.random)])


def _roomy(cache):
    """`cache` with its plain layers appending in place (`_roomy_layer`)."""
    from transformers.cache_utils import DynamicLayer

    cache.layers = [_roomy_layer()() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


ROOM = 64  # tokens of spare room a cache buffer gets when it is (re)made


@functools.cache
def _roomy_layer():
    """A DynamicLayer whose keys and values are views of buffers with room for more tokens, so a step writes its
    token in place (DynamicLayer's torch.cat copies the whole cache at every step and layer: 10% of a step at 128
    rows). Keys or values replaced from outside (rows joining or leaving) move to new buffers at the next step.
    Made on first use: transformers is imported only where decoding runs."""
    import torch
    from transformers.cache_utils import DynamicLayer

    class RoomyLayer(DynamicLayer):
        views = buffers = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]
            length, end = self.keys.shape[-2], self.keys.shape[-2] + key_states.shape[-2]
            ours = self.views is not None and self.views[0] is self.keys and self.views[1] is self.values
            if not ours or self.buffers[0].shape[-2] < end:
                shape = (*self.keys.shape[:-2], end + ROOM, self.keys.shape[-1])
                self.buffers = [torch.empty(shape, dtype=key_states.dtype, device=key_states.device) for _ in range(2)]
                self.buffers[0][..., :length, :], self.buffers[1][..., :length, :] = self.keys, self.values
            self.buffers[0][..., length:end, :], self.buffers[1][..., length:end, :] = key_states, value_states
            self.keys, self.values = self.views = (self.buffers[0][..., :end, :], self.buffers[1][..., :end, :])
            return self.keys, self.values

    return RoomyLayer


def _left_pad(x, length: int, dim: int = -2):
    """`x` with zeros before its entries along `dim` (a cache's sequence axis, or a mask's) up to `length`."""
    import torch

    missing = length - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)
