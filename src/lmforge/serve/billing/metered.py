"""A model call as the routers see it: its quota held before it runs, timed, and recorded
however it ends, billed by the rule in billing/__init__.py.

Records are written by one UsageWriter per app with group commit: a call waits until its record
is committed (so the usage a client or a bill sees is exact the moment the response is out), and
the records of calls that end together share one transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType

from sqlalchemy import Engine

from lmforge.serve.billing.ledger import Call, record_calls
from lmforge.serve.billing.quota import over_quota, reserve_tokens
from lmforge.serve.errors import APIError


class UsageWriter:
    def __init__(
        self, engine: Engine, on_written: Callable[[list[Call]], None] | None = None
    ) -> None:
        self.engine, self.on_written = engine, on_written
        self._pending: list[tuple[Call, asyncio.Future]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Write what is still pending, then stop."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def record(self, call: Call) -> None:
        """Return once the record is committed. Raises what the database raised."""
        done = asyncio.get_running_loop().create_future()
        self._pending.append((call, done))
        self._wakeup.set()
        # A caller that is cancelled meanwhile still gets its record written: shield the wait.
        await asyncio.shield(done)

    async def _run(self) -> None:
        while not (self._stopping and not self._pending):
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._pending:
                await self._write_group()

    async def _write_group(self) -> None:
        group, self._pending = self._pending, []
        try:
            await asyncio.to_thread(record_calls, self.engine, [call for call, _ in group])
        except Exception as error:  # the calls fail (500) rather than go unmetered
            for _, done in group:
                if not done.done():
                    done.set_exception(error)
        else:
            if self.on_written is not None:
                self.on_written([call for call, _ in group])
            for _, done in group:
                if not done.done():
                    done.set_result(None)


class MeteredCall:
    """`async with MeteredCall(...) as call:` times a model call and records it however it ends.

    The block sets `call.prompt_tokens`, `call.completion_tokens` as it learns them; an APIError
    records its status, a cancelled call (client gone) 499, anything else 500. A streamed
    response sets `call.streaming` and calls `finish` itself when its last byte is out.
    """

    def __init__(
        self,
        writer: UsageWriter,
        key_name: str,
        endpoint: str,
        model: str,
        quota_tokens: int | None = None,
        hold_s: float = 3600.0,
    ) -> None:
        self.writer, self.key_name, self.endpoint, self.model = writer, key_name, endpoint, model
        self.quota_tokens, self.hold_s = quota_tokens, hold_s
        self.prompt_tokens = self.completion_tokens = 0
        self.streaming = False
        self.reservation: int | None = None
        self._start = 0.0

    async def reserve(self, tokens: int) -> None:
        """Hold `tokens` (the call's largest possible cost) against the key's quota before the
        work is queued; 429 if that would pass the quota. Settled to the real count at finish.
        A key without a quota reserves nothing."""
        if self.quota_tokens is None:
            return
        held = await asyncio.to_thread(
            reserve_tokens, self.writer.engine, self.key_name, self.quota_tokens, tokens,
            self.hold_s,
        )
        if isinstance(held, int):
            self.reservation = held
            return
        in_flight = held.used + tokens <= self.quota_tokens  # calls in flight hold the rest
        held_by = f" ({held.reserved} held by its calls in flight)" if in_flight else ""
        raise over_quota(
            self.key_name,
            self.quota_tokens,
            held.used,
            f"{held_by}, and this call may use up to {tokens} "
            "(its prompt tokens + max_tokens; a smaller max_tokens may fit)",
            wait_s=1.0 if in_flight else None,  # None: the next period
        )

    async def __aenter__(self) -> MeteredCall:
        self._start = time.perf_counter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None and self.streaming:
            return  # the stream records the call when it ends
        await self.finish(exc)

    async def finish(self, exc: BaseException | None) -> None:
        """Record the call, ended by `exc` (None: success)."""
        if exc is None:
            status = 200
        elif isinstance(exc, APIError):
            status = exc.status
            exc.recorded = True
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            status = 499
        else:
            status = 500
        # The billing rule (billing/__init__.py): a reply that was not streamed is paid for whole or
        # not at all; a stream, for the chunks it sent.
        billed = status == 200 or self.streaming
        call = Call(
            key_name=self.key_name,
            model=self.model,
            endpoint=self.endpoint,
            prompt_tokens=self.prompt_tokens if billed else 0,
            completion_tokens=self.completion_tokens if billed else 0,
            latency_ms=(time.perf_counter() - self._start) * 1000,
            status=status,
            reservation=self.reservation,
        )
        await self.writer.record(call)

