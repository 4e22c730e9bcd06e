"""UsageRecorder: single spends in, SpendBatch calls out.

For callers that produce one usage event at a time (a sandbox runner, an
agent host): each `spend()` joins a buffer that is sent as one
`UsageService/SpendBatch` call when `max_batch` spends are waiting or the
oldest has waited `flush_interval_ms`, whichever comes first.

    async with BillingClient(target, service_token) as billing:
        async with UsageRecorder(billing, max_batch=100, flush_interval_ms=20) as recorder:
            pending = await recorder.spend(usage_pb2.SpendRequest(user_id="u1", amount_millicredits=1500))
            response = await pending  # durable, or the item's own typed error

- `await recorder.spend(...)` returns once the spend is queued; it waits
  (back-pressure) while `max_queue` spends are waiting to be sent, which
  happens when the server is slower than the producers (at most
  `max_in_flight` batches are outstanding).
- The returned future resolves to the item's SpendResponse once its commit is
  durable, or raises its own typed error (InsufficientCredits, ...): items
  succeed or fail on their own.
- A spend without a request_id gets one, once. A batch that fails as a whole
  with UNAVAILABLE or a deadline (server restarting, network), and any item
  answered UNAVAILABLE, is sent again with the same request_ids until
  `retry_timeout_seconds`: the server replays what it already applied, so
  nothing is lost and nothing is counted twice.
- `close()` (or leaving `async with`) sends everything still queued and waits
  for the answers.

`SyncUsageRecorder` is the same for threaded code: it runs a recorder on an
event loop of its own and returns `concurrent.futures.Future`s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import uuid
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from flownexus.billing.v1 import usage_pb2

from flownexus_billing_client.client import BillingClient
from flownexus_billing_client.errors import BillingError, from_item_error

T = TypeVar("T")

# Whole-call errors after which the same batch may well succeed.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

# The server's limit of items per SpendBatch call.
MAX_BATCH_LIMIT = 1000


@dataclass
class RecorderStats:
    spends: int = 0
    batches: int = 0  # SpendBatch calls made, retries included
    retries: int = 0  # calls made again (whole batch or its UNAVAILABLE items)
    failed: int = 0  # spends answered with an error
    batch_sizes: list[int] = field(default_factory=list)


@dataclass
class _Pending:
    request: usage_pb2.SpendRequest
    future: asyncio.Future[usage_pb2.SpendResponse]
    queued_at: float


class UsageRecorder:
    def __init__(
        self,
        client: BillingClient,
        *,
        max_batch: int = 100,
        flush_interval_ms: float = 20.0,
        max_queue: int = 10_000,
        max_in_flight: int = 4,
        retry_backoff_seconds: float = 0.05,
        retry_max_backoff_seconds: float = 1.0,
        retry_timeout_seconds: float = 60.0,
        call_timeout_seconds: float = 10.0,
    ) -> None:
        if not 1 <= max_batch <= MAX_BATCH_LIMIT:
            raise ValueError(f"max_batch must be 1 to {MAX_BATCH_LIMIT}")
        if max_queue < max_batch or max_in_flight < 1 or flush_interval_ms < 0:
            raise ValueError("need max_queue >= max_batch, max_in_flight >= 1, flush_interval_ms >= 0")
        self.client = client
        self.max_batch = max_batch
        self.flush_interval = flush_interval_ms / 1000
        self.retry_backoff = retry_backoff_seconds
        self.retry_max_backoff = retry_max_backoff_seconds
        self.retry_timeout = retry_timeout_seconds
        self.call_timeout = call_timeout_seconds
        self.stats = RecorderStats()
        self._buffer: deque[_Pending] = deque()
        self._space = asyncio.Semaphore(max_queue)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._wake = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()
        self._closing = False
        self._flush_now = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> UsageRecorder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def spend(self, request: usage_pb2.SpendRequest) -> asyncio.Future[usage_pb2.SpendResponse]:
        """Queue one spend (waiting while the queue is full); the future of its
        own result. The request is not copied: do not change it afterwards."""
        if self._closing:
            raise RuntimeError("the recorder is closed")
        if not request.request_id:
            request.request_id = uuid.uuid4().hex
        await self._space.acquire()
        if self._closing:  # closed while waiting for room
            self._space.release()
            raise RuntimeError("the recorder is closed")
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._run(), name="usage-recorder")
        item = _Pending(request, loop.create_future(), loop.time())
        self._buffer.append(item)
        self.stats.spends += 1
        if len(self._buffer) == 1 or len(self._buffer) >= self.max_batch:
            self._wake.set()
        return item.future

    async def flush(self) -> None:
        """Send what is queued now, without waiting for the timer, and wait for every answer."""
        futures = [p.future for p in self._buffer]
        self._flush_now = True
        self._wake.set()
        if futures:
            await asyncio.wait(futures)
        self._flush_now = False

    async def close(self) -> None:
        """Send everything still queued, wait for every answer, stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._sending:
            await asyncio.wait(self._sending)

    # ---- the sender -------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._buffer:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._buffer) < self.max_batch and not (self._closing or self._flush_now):
                delay = self._buffer[0].queued_at + self.flush_interval - loop.time()
                if delay > 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), delay)
                    except TimeoutError:
                        pass
                    continue
            await self._slots.acquire()
            batch = self._take()
            task = loop.create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    def _take(self) -> list[_Pending]:
        """Up to max_batch queued spends, oldest first; a second spend with a
        request_id already in this batch waits for the next one (a batch with
        two equal ids is refused whole)."""
        batch: list[_Pending] = []
        ids: set[str] = set()
        later: list[_Pending] = []
        while self._buffer and len(batch) < self.max_batch:
            item = self._buffer.popleft()
            if item.request.request_id in ids:
                later.append(item)
                continue
            ids.add(item.request.request_id)
            batch.append(item)
        self._buffer.extendleft(reversed(later))
        for _ in batch:
            self._space.release()
        return batch

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            await self._deliver(batch)
        except Exception as exc:  # never leave a caller waiting forever
            for item in batch:
                self._fail(item, exc)
        finally:
            self._slots.release()

    async def _deliver(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        backoff = self.retry_backoff
        todo = [item for item in batch if not item.future.cancelled()]
        while todo:
            self.stats.batches += 1
            self.stats.batch_sizes.append(len(todo))
            request = usage_pb2.SpendBatchRequest(requests=[item.request for item in todo])
            again: list[_Pending] = []
            last: BillingError | None = None
            try:
                response = await self.client.usage.SpendBatch(request, timeout=self.call_timeout)
            except BillingError as exc:
                if exc.code not in RETRYABLE:
                    for item in todo:
                        self._fail(item, exc)
                    return
                again, last = todo, exc
            else:
                for item, result in zip(todo, response.results, strict=True):
                    if result.HasField("response"):
                        if not item.future.done():
                            item.future.set_result(result.response)
                        continue
                    error = from_item_error(result.error)
                    if error.code in RETRYABLE:
                        again.append(item)
                        last = error
                    else:
                        self._fail(item, error)
            if not again:
                return
            if time.monotonic() - started + backoff > self.retry_timeout:
                for item in again:
                    self._fail(item, last or BillingError(grpc.StatusCode.UNAVAILABLE, "gave up retrying"))
                return
            self.stats.retries += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.retry_max_backoff)
            todo = again

    def _fail(self, item: _Pending, exc: BaseException) -> None:
        self.stats.failed += 1
        if not item.future.done():
            item.future.set_exception(exc)


class SyncUsageRecorder:
    """A UsageRecorder for threaded code, on an event loop thread of its own.

        with SyncUsageRecorder("localhost:50051", token, max_batch=100) as recorder:
            future = recorder.spend(usage_pb2.SpendRequest(user_id="u1", amount_millicredits=1500))
            response = future.result()  # or raises the item's typed error

    `spend()` blocks while the queue is full (back-pressure)."""

    def __init__(self, target: str, token: str, *, client_options: dict[str, Any] | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="usage-recorder", daemon=True)
        self._thread.start()

        async def build() -> tuple[BillingClient, UsageRecorder]:
            client = BillingClient(target, token, **(client_options or {}))
            return client, UsageRecorder(client, **options)

        self._client, self._recorder = self._call(build())
        self._closed = False

    @property
    def stats(self) -> RecorderStats:
        return self._recorder.stats

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def spend(self, request: usage_pb2.SpendRequest) -> concurrent.futures.Future[usage_pb2.SpendResponse]:
        """Queue one spend (blocking while the queue is full); the future of its own result."""
        result: concurrent.futures.Future[usage_pb2.SpendResponse] = concurrent.futures.Future()

        async def queue() -> None:
            pending = await self._recorder.spend(request)

            def copy(done: asyncio.Future[usage_pb2.SpendResponse]) -> None:
                if done.cancelled():
                    result.cancel()
                elif (exc := done.exception()) is not None:
                    result.set_exception(exc)
                else:
                    result.set_result(done.result())

            pending.add_done_callback(copy)

        self._call(queue())
        return result

    def flush(self) -> None:
        self._call(self._recorder.flush())

    def close(self) -> None:
        """Send everything queued, wait for the answers, stop the thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._recorder.close())
            self._call(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> SyncUsageRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
