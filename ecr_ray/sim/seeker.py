"""The simulated seeker: an instruction LLM told its persona (the hidden target movies, what it likes about them,
its mood) that writes one short message a round, and the filter that keeps it from saying a target's title.

Each message is checked with the project's own entity linker (movie titles included) and a plain match of each
title: a message that names a target is written again (sampled, another seed) up to `sim.retries` times, then the
turn fails. The simulator runs in-process (`LocalChat`, a packaged model) or against any OpenAI-compatible
endpoint (`sim.llm.base_url`)."""
from __future__ import annotations

import hashlib
import re

from ecr_ray.data.linking import text_key

MODES = ("attribute", "free")
NAMES = {"genre": "genre", "starring": "actors", "director": "director"}


def persona_prompt(persona: dict) -> str:
    """The system message: who the seeker is and the rules it plays by (iEvaLM's, without ChatGPT)."""
    liked = "; ".join(f"{t} ({persona['feedback'][i]})" for t, i in zip(persona["titles"], persona["targets"], strict=True))
    likes = "; ".join(f"{NAMES[a]}: {', '.join(v)}" for a, v in persona["attributes"].items() if v)
    mood = " and ".join(persona["emotions"]) or "calm"
    return ("You are a person chatting with a movie recommender to find a movie to watch. Secretly, the movies you "
            f"want are: {liked}. NEVER say these titles or any part of them; describe what you want instead. "
            f"What you like about them: {likes or 'nothing in particular'}. You feel {mood}. Write only your next message "
            "to the recommender: one or two short, casual sentences.")


def seeker_instruction(persona: dict, mode: str, round_: int, last: dict | None) -> str:
    """What this round's message should do: react to the system's last suggestion the way the logged seeker did
    (a target it liked or disliked, or not one it wants), then ask on, in the mode's way."""
    parts = []
    if last is not None:
        title, target = last["title"], last.get("target")
        parts.append(f"The recommender suggested {title}. " + (
            "It is not what you want: say no." if target is None else
            f"That is one of your movies and you {persona['feedback'][target]} it: say so, without its title."))
    if mode == "attribute":
        attribute = next((a for a in list(persona["attributes"])[round_ - 1:] + list(persona["attributes"]) if persona["attributes"][a]), None)
        if attribute:
            parts.append(f"Tell the recommender the {NAMES[attribute]} you want: {', '.join(persona['attributes'][attribute][:2])}.")
    else:
        parts.append("Ask for a movie in your own words: what you feel like watching, and how you feel.")
    return " ".join(parts)


class TitleFilter:
    """Does a message name a target? The KG linker's movie mentions and a plain match of each title (without its
    year or qualifier; a title of one short word only as a whole word)."""

    def __init__(self, kg):
        from ecr_ray.data.linking import TextEntityLinker
        from ecr_ray.rec.features import said_items

        self.linker, self.said = TextEntityLinker(kg, items=True), said_items(kg)
        self.index = {int(e): i for i, e in enumerate(kg.item_ids)}

    def leaks(self, text: str, persona: dict) -> list[str]:
        """The target titles `text` names (empty: it may be said)."""
        positions = {p for e in self.linker.link(text) for p in self.said.get(e, [self.index.get(e)]) if p is not None}
        key = f" {text_key(text)} "
        return [t for i, t in zip(persona["targets"], persona["titles"], strict=True)
                if self.index.get(i) in positions or (len(text_key(t)) > 3 and f" {text_key(t)} " in key)]


# a small seeker often answers as the assistant it was tuned to be: offers help, refuses, recommends (a phrase list,
# read as a validity figure, not a filter: on the cpu run's 1.5B seeker it caught 66 of 461 messages)
ASSISTANT_VOICE = re.compile(r"\b(?:(?:I can|happy to) help|I(?:'m| am) sorry, but I (?:can't|cannot)"
                             r"|I (?:can't|cannot) (?:help|assist)|as an AI|how can I (?:help|assist)|I(?: would|'d)? (?:recommend|suggest))\b", re.I)


def speaks_as_assistant(message: str) -> bool:
    """Does a seeker's message speak as the recommender or an assistant (`ASSISTANT_VOICE`)?"""
    return bool(ASSISTANT_VOICE.search(message))


def seed_of(*parts) -> int:
    """A sampling seed from the turn (the same for every system, so the same seekers open the same way)."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def clean(text: str, max_words: int) -> str:
    """The message as a seeker would send it: the first line, no quotes or role label, at most `max_words` words."""
    text = re.sub(r"^\s*(user|seeker|me|you)\s*:\s*", "", text.strip().split("\n")[0].strip(), flags=re.IGNORECASE).strip(' "')
    return " ".join(text.split()[:max_words])


class LocalChat:
    """An instruction-tuned causal LM in this process writing the seekers' messages, a round's together (left-padded,
    one seeded sampling per batch): decoding dominates, and a batch of them costs little more than one."""

    def __init__(self, model: str, allow_download: bool = False, threads: int = 1):
        from ecr_ray.models import load_instruct_lm

        self.tokenizer, self.model = load_instruct_lm(model, allow_download, threads, padding_side="left")
        self.tokenizer.pad_token = self.tokenizer.pad_token or self.tokenizer.eos_token

    def complete_many(self, chats: list[list[dict]], max_tokens: int, temperature: float, seed: int) -> list[str]:
        import torch

        texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
        ids = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(**ids, max_new_tokens=max_tokens, do_sample=temperature > 0, pad_token_id=self.tokenizer.pad_token_id,
                                      **({"temperature": temperature} if temperature > 0 else {}))
        return self.tokenizer.batch_decode(out[:, ids["input_ids"].shape[1]:], skip_special_tokens=True)


class EndpointChat:
    """The same, against an OpenAI-compatible endpoint (its retries and rate bound: `llm.client.ValidatedChat`; each of
    `actors` simulating actors keeps to its share of `llm.qps`)."""

    def __init__(self, llm: dict, actors: int = 1):
        from ecr_ray.llm.client import ValidatedChat

        self.chat = ValidatedChat(llm, llm["qps"] / actors)

    def complete_many(self, chats: list[list[dict]], max_tokens: int, temperature: float, seed: int) -> list[str]:
        return [self.chat.text(c, self.chat.record(), max_tokens=max_tokens, temperature=temperature, seed=seed) for c in chats]


class Seeker:
    """Writes the personas' messages of a round, with the title filter: per turn (message, or None when every try
    named a target; tries rejected). A turn asked again (a dialogue's opening, for another system) is written once."""

    def __init__(self, chat, title_filter: TitleFilter, llm, retries: int, max_words: int, seed: int):
        self.chat, self.filter, self.llm, self.retries, self.max_words, self.seed = chat, title_filter, llm, retries, max_words, seed
        self.written: dict[tuple, tuple[str | None, int]] = {}

    def messages(self, turns: list[tuple[dict, list[dict], str, int, dict | None]]) -> list[tuple[str | None, int]]:
        """`turns`: (persona, history, mode, round, the system's last suggestion) each."""
        keys, asks = [], {}
        for persona, history, mode, round_, last in turns:
            said = "\n".join(f"{'You' if m['role'] == 'user' else 'Recommender'}: {m['content']}" for m in history)
            ask = (f"The conversation so far:\n{said}\n\n" if said else "You start the conversation.\n\n") + seeker_instruction(persona, mode, round_, last)
            keys.append((persona["conversation_id"], mode, round_, ask))
            if keys[-1] not in self.written:
                asks[keys[-1]] = [{"role": "system", "content": persona_prompt(persona)}, {"role": "user", "content": ask}], persona
        pending = list(asks)
        for attempt in range(self.retries + 1):
            if not pending:
                break
            temperature = self.llm.temperature if attempt == 0 else max(self.llm.temperature, 0.7)  # a retry must differ
            texts = self.chat.complete_many([asks[k][0] for k in pending], self.llm.max_tokens, temperature,
                                            seed_of(self.seed, *min(k[:3] for k in pending), attempt))
            for key, text in zip(list(pending), texts, strict=True):
                text = clean(text, self.max_words)
                if text and not self.filter.leaks(text, asks[key][1]):
                    self.written[key] = text, attempt
                    pending.remove(key)
        self.written.update({k: (None, self.retries + 1) for k in pending})
        return [self.written[k] for k in keys]
