"""The paper's five LLM scores read G-Eval style, from the judge's next-token probabilities.

Per criterion the judge is asked for one digit 0-9, and the score is the probability-weighted mean of
the ten digits in its next-token distribution (renormalised over the digits): nothing free-form is
parsed, so no answer is invalid, and a judge unsure between 6 and 8 says 7 rather than a coin flip.
In-process (`LocalJudge`) the rubric, conversation and response are a prefix the five questions
share: it goes through the model once and the questions follow it together, as a batch of five. Against an OpenAI-compatible
endpoint the same reading comes from `top_logprobs` (`logprob_score`; `eval/scorer.py` asks).
"""
from __future__ import annotations

import math

CRITERIA = ("emotional_intensity", "emotional_persuasiveness", "logic_persuasiveness", "informativeness", "lifelikeness")
RUBRIC = ("You are an impartial judge of a movie recommender's response to a user. You will be asked about one "
          "quality of the response; answer with a single digit from 0 (worst) to 9 (best).")
QUESTIONS = {  # anchored at both ends: a small judge reads a bare "0-9" as "about 5" for everything
    "emotional_intensity": "How strongly does the response express emotions (excitement, love, fear, sadness...)? "
                           "0 = no emotion, only bland politeness; 9 = vivid, intense feelings.",
    "emotional_persuasiveness": "How much do the feelings the response expresses about the recommended movie make the user "
                                "want to watch it? 0 = no feelings about this movie; 9 = feelings that make it irresistible.",
    "logic_persuasiveness": "How well do the response's reasons, specific to the recommended movie and to what the user asked "
                            "for, support watching it? 0 = no reasons, or reasons that do not fit the user's request; "
                            "9 = clear, specific reasons that match the request.",
    "informativeness": "How much specific information about the recommended movie (title, genre, plot, actors, director, "
                       "year) does the response give? 0 = none, only generic praise; 9 = many specific facts.",
    "lifelikeness": "How natural and human does the response sound as the next line of this conversation? 0 = robotic, "
                    "repetitive or unrelated to the conversation; 9 = what a friendly person would say.",
}
ASK = "\n\n{question} Answer with one digit from 0 to 9."
# Pairwise (`LocalJudge.prefer`): the same question of two responses to the same turn; a small judge that cannot
# place a reply on 0-9 may still tell which of two is better. It favours a position, so both orders are asked.
PAIR_RUBRIC = ("You are an impartial judge of two candidate responses of a movie recommender to the same user. "
               "Answer with one letter: A or B.")
MARK = "\u2063"  # where the question goes in the rendered chat template (an invisible separator)


def judge_body(context: str, title: str, response: str) -> str:
    return f"Conversation:\n{context}\n\nRecommended movie: {title}\n\nResponse to judge:\n{response}"


def pair_body(context: str, title: str, first: str, second: str) -> str:
    return f"Conversation:\n{context}\n\nRecommended movie: {title}\n\nResponse A:\n{first}\n\nResponse B:\n{second}\n\n"


def pair_ask(criterion: str) -> str:
    question = QUESTIONS[criterion].split("?")[0] + "?"  # the question without its 0-9 anchors
    return f"Question, about each response: {question} Which response does this better, A or B? Answer with one letter."


def judge_messages(context: str, title: str, response: str, criterion: str) -> list[dict]:
    """The chat an endpoint is asked for one criterion (the same text `LocalJudge` reads)."""
    ask = ASK.format(question=QUESTIONS[criterion])
    return [{"role": "system", "content": RUBRIC}, {"role": "user", "content": judge_body(context, title, response) + ask}]


def digit_score(probs: dict[str, float]) -> float | None:
    """The probability-weighted mean digit of `probs` (token text -> probability, e.g. exponentiated
    `top_logprobs`; " 7" and "7" both count for 7), or None when no digit has any mass."""
    mass = [0.0] * 10
    for token, p in probs.items():
        if len(token.strip()) == 1 and token.strip().isdigit():
            mass[int(token.strip())] += p
    return expected_digit(mass)


def expected_digit(mass: list[float]) -> float | None:
    """The mean digit under the ten digits' probabilities `mass` (renormalised), or None when they are all 0."""
    total = sum(mass)
    return sum(d * p for d, p in enumerate(mass)) / total if total > 0 else None


def logprob_score(top_logprobs: list[dict]) -> float | None:
    """`digit_score` of an OpenAI `top_logprobs` list ({token, logprob}) for the answer's first token."""
    return digit_score({t["token"]: math.exp(t["logprob"]) for t in top_logprobs})


class LocalJudge:
    """An instruction-tuned causal LM in this process (a packaged name, folder or, with
    `allow_download`, hub name) scoring responses on the five criteria."""

    def __init__(self, model: str, allow_download: bool = False, threads: int = 1):
        from ecr_ray.models import load_instruct_lm

        self.tokenizer, self.model = load_instruct_lm(model, allow_download, threads)
        self.digits = self._digit_tokens()
        self.letters = {x: self._single_tokens(x) for x in "AB"}  # `prefer`'s answers
        self.last: tuple[list[int], object] | None = None  # the last prefix's ids and its cache, for the next row's reuse

    def _single_tokens(self, text: str) -> list[int]:
        """The single tokens that spell `text` (with or without a leading space)."""
        ids = {tuple(self.tokenizer.encode(t, add_special_tokens=False)) for t in (text, f" {text}")}
        return sorted({i[0] for i in ids if len(i) == 1})

    def _digit_tokens(self) -> list[list[int]]:
        """Per digit, the single tokens that spell it."""
        out = [self._single_tokens(d) for d in "0123456789"]
        if not all(out):
            raise ValueError("the judge's tokenizer does not spell every digit as one token")
        return out

    def parts(self, context: str, title: str, response: str) -> tuple[list[int], dict[str, list[int]]]:
        """The shared prefix's token ids and each criterion's suffix (its question, the end of the user
        turn and the assistant's header)."""
        return self._split(RUBRIC, judge_body(context, title, response), {c: ASK.format(question=q) for c, q in QUESTIONS.items()})

    def pair_parts(self, context: str, title: str, first: str, second: str) -> tuple[list[int], dict[str, list[int]]]:
        """`parts` of the pairwise question (A: `first`): the two responses are the prefix, each criterion's question its suffix."""
        return self._split(PAIR_RUBRIC, pair_body(context, title, first, second), {c: pair_ask(c) for c in CRITERIA})

    def _split(self, system: str, body: str, asks: dict[str, str]) -> tuple[list[int], dict[str, list[int]]]:
        text = self.tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": body + MARK}],
                                                  tokenize=False, add_generation_prompt=True)
        before, after = text.split(MARK)
        encode = lambda s: self.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731 - the template holds the special tokens
        return encode(before), {c: encode(a + after) for c, a in asks.items()}

    def digit_probs(self, logits) -> list[float]:
        """The ten digits' probabilities in the next-token distribution (each digit's spellings summed)."""
        import torch

        p = torch.softmax(logits.float(), dim=-1)
        return [float(p[ids].sum()) for ids in self.digits]

    def prefilled(self, prefix: list[int]):
        """A cache holding `prefix`, starting from the part it shares with the last row's prefix: rows of
        one turn (a variant's response, the real one, a mismatched one, the template) share the rubric and
        the conversation and differ only in the response."""
        import copy

        import torch
        from transformers import DynamicCache

        shared, cache = 0, DynamicCache(config=self.model.config)
        if self.last is not None:
            ids, kept = self.last
            while shared < min(len(ids), len(prefix) - 1) and ids[shared] == prefix[shared]:
                shared += 1
            if shared:  # the kept cache loses what is not shared and takes this prefix's rest
                kept.crop(shared - len(ids))  # transformers 5: minus the tokens to drop
                cache = kept
        with torch.inference_mode():
            self.model(input_ids=torch.tensor([prefix[shared:]], device=self.model.device), past_key_values=cache,
                       use_cache=True, logits_to_keep=1)
        self.last = prefix, cache
        return copy.deepcopy(cache)  # the caller extends its copy with the questions

    def next_logits(self, prefix: list[int], asks: list[list[int]]):
        """The next-token logits after `prefix` + each of `asks`: the prefix once (what it shares with the last
        row's reused), then the asks together on copies of its cache (left-padded to one width)."""
        import torch

        width, start, device = max(map(len, asks)), len(prefix), self.model.device
        pad = lambda a: width - len(a)  # noqa: E731
        ids = [[self.tokenizer.eos_token_id] * pad(a) + a for a in asks]
        mask = [[1] * start + [0] * pad(a) + [1] * len(a) for a in asks]
        positions = [[start] * pad(a) + list(range(start, start + len(a))) for a in asks]
        cache = self.prefilled(prefix)
        with torch.inference_mode():
            cache.batch_repeat_interleave(len(asks))
            return self.model(input_ids=torch.tensor(ids, device=device), attention_mask=torch.tensor(mask, device=device),
                              position_ids=torch.tensor(positions, device=device), past_key_values=cache, use_cache=True,
                              logits_to_keep=1).logits[:, -1].cpu()

    def score(self, context: str, title: str, response: str) -> dict[str, float]:
        """The five criteria's scores (0-9, probability-weighted) of one response, its five questions asked together
        (1.9 s a response one question at a time)."""
        prefix, suffixes = self.parts(context, title, response)
        logits = self.next_logits(prefix, [suffixes[c] for c in CRITERIA])
        return {c: expected_digit(self.digit_probs(row)) for c, row in zip(CRITERIA, logits)}

    def prefer(self, context: str, title: str, first: str, second: str, criteria=CRITERIA) -> dict[str, float]:
        """Per criterion, P(`first` does it better than `second`) from the next-token P(A) and P(B), averaged over both
        orders (the judge's position bias cancels); 0.5: no preference. The criteria of one order are asked together."""
        import torch

        def p_a(a: str, b: str) -> list[float]:
            prefix, suffixes = self.pair_parts(context, title, a, b)
            p = torch.softmax(self.next_logits(prefix, [suffixes[c] for c in criteria]).float(), -1)
            pa, pb = (p[:, self.letters[x]].sum(-1) for x in "AB")
            return [float(x / (x + y)) if x + y > 0 else 0.5 for x, y in zip(pa, pb)]

        return {c: 0.5 * (x + 1 - y) for c, x, y in zip(criteria, p_a(first, second), p_a(second, first), strict=True)}
