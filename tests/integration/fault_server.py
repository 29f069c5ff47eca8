"""An OpenAI-compatible test server that injects faults on a fixed schedule.

Utterance i (the order the test gives) meets fault plan i % 6:
  0 one 429, then a valid answer       3 malformed JSON, then (corrective request) a valid answer
  1 two 500s, then a valid answer      4 unknown labels twice: recorded as failed with the raw answer
  2 one slow answer (past the client   5 a valid answer at once
    timeout), then a valid answer
So a third of the first requests fail transiently and a third of the utterances need a corrective
retry; every count the test expects is exact. The server runs in a thread on loopback.
"""
import asyncio
import json
import socket
import threading
import time
from collections import Counter

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

VALID = {0: ["like"], 1: ["curious"], 2: ["happy", "grateful"], 3: ["negative"], 5: ["agreement"]}
TRANSIENT = {0: [429], 1: [500, 500], 2: ["slow"]}


class FaultServer:
    def __init__(self, plan: dict[str, int], slow_s: float, delay_s: float = 0.0):
        """plan: prompt (the user message) -> fault plan 0..5; delay_s: every answer waits this long."""
        self.plan, self.slow_s, self.delay_s = plan, slow_s, delay_s
        self.attempts: Counter = Counter()  # (text, phase) -> requests seen
        self.log: list[tuple[str, int, str]] = []  # (text, phase, what was answered)
        app = FastAPI()
        app.post("/v1/chat/completions")(self.chat)
        app.get("/v1/models")(lambda: {"object": "list", "data": [{"id": "fault", "object": "model"}]})
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    async def chat(self, request: Request):
        body = await request.json()
        text = body["messages"][1]["content"]  # the prompt: context and utterance
        phase = len(body["messages"])  # 2: the question, 4: the corrective retry
        plan = self.plan[text]
        n = self.attempts[(text, phase)]
        self.attempts[(text, phase)] += 1
        await asyncio.sleep(self.delay_s)
        faults = TRANSIENT.get(plan, []) if phase == 2 else []
        if n < len(faults):
            fault = faults[n]
            self.log.append((text, phase, str(fault)))
            if fault == "slow":
                await asyncio.sleep(self.slow_s)
                return self._answer('{"emotions": ["happy"]}')
            return JSONResponse({"error": {"message": f"injected {fault}"}}, status_code=fault)
        if plan == 3 and phase == 2:
            answer = '{"emotions": ["negative"'  # cut short
        elif plan == 4:
            answer = '{"emotions": ["sleepy", "hungry", "like"]}'
        else:
            answer = json.dumps({"emotions": VALID[plan]})
        self.log.append((text, phase, answer))
        return self._answer(answer)

    @staticmethod
    def _answer(content: str) -> dict:
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "fault",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
