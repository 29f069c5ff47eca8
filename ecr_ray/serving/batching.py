"""Continuous batching in a replica: one thread decodes every chat request in flight together.

A request that arrives joins the running batch at the next decoding step (not after the batch ends,
as a batch formed on arrival would), so at concurrency 4 each step serves four requests for little
more than the price of one, and a new request's first token waits for one step and its own prefill.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable


class _Request:
    def __init__(self, row: dict, options: dict | None, loop: asyncio.AbstractEventLoop):
        self.row, self.options, self.loop, self.out, self.cancelled = row, options, loop, asyncio.Queue(), False
        self.held, self.sent_at = "", -float("inf")  # text not sent yet, and when text was last sent

    def send(self, item) -> None:
        """To the request's coroutine, from the decoding thread."""
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # its event loop has closed: nobody is waiting
            self.cancelled = True


class ContinuousBatcher:
    """`stream(row, options)` yields what `ResponseGenerator.stream` does; at most `max_batch` requests
    are decoded at once (the rest wait their turn in arrival order). After a request's first piece, its text is
    sent at most every `interval_s` (the pieces between joined): each piece sent wakes the replica's event loop
    and crosses to the caller, work that competes with decoding for the same cores."""

    def __init__(self, make_batch: Callable, max_batch: int, interval_s: float = 0.0):
        """`make_batch()`: a fresh `ChatBatch` (after a failed step, the requests in it get the error)."""
        self.make_batch, self.max_batch, self.interval, self.incoming = make_batch, max_batch, interval_s, queue.SimpleQueue()
        threading.Thread(target=self._run, daemon=True, name="decode").start()

    async def stream(self, row: dict, options: dict | None) -> AsyncIterator[str | dict]:
        request = _Request(row, options, asyncio.get_running_loop())
        self.incoming.put(request)
        try:
            while (item := await request.out.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            request.cancelled = True  # a client that went away: its row leaves the batch

    def _run(self) -> None:
        import torch

        torch.set_num_threads(torch.get_num_threads())  # the replica's setting, in this thread too
        batch, live = self.make_batch(), {}
        while True:
            arrived = [] if live else [self.incoming.get()]  # idle: wait for a request
            while len(live) + len(arrived) < self.max_batch and not self.incoming.empty():
                arrived.append(self.incoming.get_nowait())
            for request in arrived:
                try:
                    live[batch.add(request.row, request.options)] = request
                except Exception as err:  # noqa: BLE001 - that request's own error (e.g. its prompt), sent to it
                    request.send(err)
            for key in [k for k, r in live.items() if r.cancelled]:
                batch.cancel(key)
                del live[key]
            try:
                results = batch.step()
            except Exception as err:  # noqa: BLE001 - every request in the failed step gets the error; the next start afresh
                for request in live.values():
                    request.send(err)
                batch, live = self.make_batch(), {}
                continue
            now = time.monotonic()
            for key, (piece, end) in results.items():
                request = live[key]
                request.held += piece
                if request.held and (end or now - request.sent_at >= self.interval):
                    request.send(request.held)
                    request.held, request.sent_at = "", now
                if end:
                    request.send(end)
                    request.send(None)
                    del live[key]
