"""The generator's prompts: one builder for training, batch generation and serving alike.

A prompt holds the dialogue context, the item's name and (with retrieval) up to four entities and
two KG triples; it is rendered with the model's chat template. Truncation rule, when a prompt
does not fit its token budget: the context loses its oldest tokens first; only if the prompt is
still too long is it cut from the left. Training responses are cut to `response_tokens`.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

SYSTEM_PROMPT = ("You are an empathetic movie recommender. Recommend the movie below to the user warmly and "
                 "persuasively, like a personal review, grounded in the knowledge given.")
# for tokenizers without a chat template (GPT-2): role-tagged lines
FALLBACK_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}assistant: {% endif %}")


def user_message(context: str, title: str, knowledge: dict | None) -> str:
    lines = [f"Conversation:\n{context.strip() or '(no conversation yet)'}", f"Movie to recommend: {title}"]
    if knowledge is not None:
        lines.append("Related entities: " + (", ".join(knowledge["entities"]) or "none"))
        lines.append("Knowledge: " + ("; ".join(" | ".join(t) for t in knowledge["triples"]) or "none"))
    return "\n".join(lines)


class PromptBuilder:
    """Token ids of prompts (and training examples) for one tokenizer; counts what it truncates."""

    def __init__(self, tokenizer, max_length: int, response_tokens: int, retrieval: bool):
        self.tokenizer, self.max_length, self.response_tokens, self.retrieval = tokenizer, max_length, response_tokens, retrieval
        self.truncated = 0

    def messages(self, context: str, title: str, knowledge: dict | None) -> list[dict]:
        return [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user_message(context, title, knowledge if self.retrieval else None)}]

    def _render(self, context: str, title: str, knowledge: dict | None) -> list[int]:
        text = self.tokenizer.apply_chat_template(self.messages(context, title, knowledge), tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt(self, context: str, title: str, knowledge: dict | None, budget: int | None = None) -> list[int]:
        """Prompt ids of at most `budget` tokens (default: max_length - response_tokens)."""
        budget = self.max_length - self.response_tokens if budget is None else budget
        ids = self._render(context, title, knowledge)
        if len(ids) <= budget:
            return ids
        self.truncated += 1
        full = len(ids)
        context_ids = self.tokenizer(context, add_special_tokens=False)["input_ids"]
        keep = len(context_ids) - (len(ids) - budget) - 2  # 2: tokens may merge differently at the new edge
        if keep > 0:
            ids = self._render("..." + self.tokenizer.decode(context_ids[-keep:]), title, knowledge)
        if len(ids) > budget:
            ids = ids[-budget:]
        log.info("prompt of %d tokens cut to %d (context shortened first)", full, budget)
        return ids

    def example(self, context: str, title: str, knowledge: dict | None, response: str) -> dict:
        """{input_ids, labels}: the loss falls on the response (and its end token) only."""
        answer = self.tokenizer(response + self.tokenizer.eos_token, add_special_tokens=False)["input_ids"][: self.response_tokens]
        prompt = self.prompt(context, title, knowledge, self.max_length - len(answer))
        return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}
