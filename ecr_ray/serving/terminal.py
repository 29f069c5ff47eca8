"""`ecr-ray chat --run-dir DIR`: the Serve app's conversation in the terminal, same parts in-process."""
from __future__ import annotations

import asyncio
import sys

from ecr_ray.serving.api import BadRequest, RecommendRequest, check_conversation
from ecr_ray.artifacts import NotTrained
from ecr_ray.serving.components import LocalParts, answer, load_run

HELP = "type a message (/reset starts over; /quit, Ctrl-D or Ctrl-C ends)"


def chat(run_dir: str, overrides: list[str], top_k: int | None = None, stdin=None, stdout=None) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    try:
        cfg, run = load_run(run_dir, overrides)
    except NotTrained as err:
        print(f"ecr-ray: {err}", file=sys.stderr)
        return 2
    print(f"ecr-ray chat: loading the models of {run.uri} ...", file=stdout, flush=True)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # load reports and progress bars are noise in a conversation
    hf_logging.disable_progress_bar()
    if stdin.isatty():
        import readline  # noqa: F401 - line editing and history for input()
    parts = LocalParts(run, overrides)
    print(HELP, file=stdout, flush=True)
    messages: list[dict] = []
    try:
        while True:
            text = _read("you> ", stdin, stdout).strip()
            if not text:
                continue
            if text == "/quit":
                return 0
            if text == "/reset":
                messages = []
                print("(a new conversation)", file=stdout)
                continue
            try:
                turn = check_conversation(RecommendRequest(messages=[*messages, {"role": "user", "content": text}]), cfg.serve)
            except BadRequest as err:
                print(f"  ! {err}", file=stdout)
                continue
            asyncio.run(_reply(parts, turn, top_k or cfg.serve.top_k, stdout))
            messages = turn
    except (EOFError, KeyboardInterrupt):  # Ctrl-D, Ctrl-C: the conversation ends, quietly
        print(file=stdout)
        return 0


def _read(prompt: str, stdin, stdout) -> str:
    """A line from the terminal through input() (readline's editing and history), else from `stdin`."""
    if stdin is sys.stdin and stdout is sys.stdout:
        return input(prompt)
    print(prompt, end="", file=stdout, flush=True)
    line = stdin.readline()
    if not line:
        raise EOFError
    return line


async def _reply(parts: LocalParts, messages: list[dict], top_k: int, stdout) -> None:
    found, args = await answer(parts, messages, top_k)
    felt = found["emotions"][-1]
    print("  emotion: " + ", ".join(f"{label} {felt['probs'][label]:.2f}" for label in felt["labels"]), file=stdout)
    print("  recommended: " + "; ".join(f"{i['title']} ({100 * i['score']:.1f}%)" for i in found["items"]), file=stdout)
    print("ecr> ", end="", file=stdout, flush=True)
    pieces = []
    async for piece in parts.stream(*args):
        if not isinstance(piece, str):  # the finish reason and token counts
            continue
        pieces.append(piece)
        print(piece, end="", file=stdout, flush=True)
    print(file=stdout, flush=True)
    messages.append({"role": "assistant", "content": "".join(pieces)})
