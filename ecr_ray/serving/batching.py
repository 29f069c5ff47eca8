"""Continuous batching in a replica: one thread decodes every chat request in flight together.

A request that arrives joins the running batch at the next decoding step (not after the batch ends,
as a batch formed on arrival would), so at concurrency 4 each step serves four requests for little
more than the price of one, and a new request's first token waits for one step and its own prefill.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable


class _Request:
    def __init__(self, row: dict, options: dict | None, loop: asyncio.AbstractEventLoop):
        self.row, self.options, self.loop, self.out, self.cancelled = row, options, loop, asyncio.Queue(), False

    def send(self, item) -> None:
        """To the request's coroutine, from the decoding thread."""
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # its event loop has closed: nobody is waiting
            self.cancelled = True


class ContinuousBatcher:
    """`stream(row, options)` yields what `ResponseGenerator.stream` does; at most `max_batch` requests
    are decoded at once (the rest wait their turn in arrival order)."""

    def __init__(self, make_batch: Callable, max_batch: int):
        """`make_batch()`: a fresh `ChatBatch` (after a failed step, the requests in it get the error)."""
        self.make_batch, self.max_batch, self.incoming = make_batch, max_batch, queue.SimpleQueue()
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
            for key, (piece, end) in results.items():
                request = live[key]
                if piece:
                    request.send(piece)
                if end:
                    request.send(end)
                    request.send(None)
                    del live[key]
