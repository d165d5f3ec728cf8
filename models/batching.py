"""The micro-batcher: coalesce inputs of many concurrent requests into model calls.

Each request submits its items (token-id sequences here, images later) and awaits one
array with a row per item, in its own order. Behind that:

* a bounded queue of items gives backpressure: ``submit`` waits while it is full; items
  are taken from it in turn (round robin) from the oldest requests that fill a batch,
  small requests (up to a batch of items) and large ones alternating: under sustained
  load requests finish in about the order they came instead of all together at the end,
  and requests of 1,024 inputs do not hold back a request of one queued after them;
* a collector takes up to ``max_batch_size`` items, waiting at most ``max_wait_s``
  for company after the first; while every compute stream is busy it keeps topping
  the next batch up, so the model never waits for Python and never runs half-empty
  batches when work is queued;
* a batch is sorted by length and cut into the chunks with the least padded work
  (plus a per-call overhead), each under ``max_batch_tokens``;
* batches run on ``streams`` compute threads, off the event loop, their chunks queued
  to the threads at once (on a CPU, two single-threaded streams beat one two-threaded stream:
  neither waits at the other's barriers, so a core taken by the broker or the event
  loop slows one stream instead of stalling both);
* a chunk that raises is retried request by request, so a failure fails only the
  request that caused it.

>>> import asyncio, numpy as np
>>> def embed(items):  # doubles each number; a real one runs a model
...     return np.array([[2.0 * len(i)] for i in items], dtype=np.float32)
>>> async def demo():
...     async with MicroBatcher(embed, max_batch_size=8, max_wait_s=0.001) as b:
...         r1, r2 = await asyncio.gather(b.submit([[1, 2], [1]]), b.submit([[1, 2, 3]]))
...         return r1.ravel().tolist(), r2.ravel().tolist()
>>> asyncio.run(demo())
([4.0, 2.0], [6.0])
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence, Sized
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Vectors = npt.NDArray[np.float32]


DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "shotstream_deadline", default=None
)
"""When (``time.time()``) the caller of the work running in this context stops waiting:
``submit`` refuses items that the queue ahead of them would keep past it
(:class:`Unreachable`). Unset: no deadline."""


class Unreachable(Exception):
    """Items refused by ``submit``: those queued ahead would take past the deadline."""

    def __init__(self, wait_s: float, left_s: float) -> None:
        super().__init__(f"about {wait_s:.1f} s of model work ahead, {left_s:.1f} s left")
        self.wait_s = wait_s
        self.left_s = left_s


class Overloaded(Exception):
    """Items with a deadline refused by ``submit``: those queued ahead would keep them
    longer than the batcher's ``max_queue_wait_s``, though not past the deadline."""

    def __init__(self, wait_s: float, limit_s: float) -> None:
        super().__init__(f"about {wait_s:.1f} s of model work ahead, over {limit_s:g} s")
        self.wait_s = wait_s
        self.limit_s = limit_s


def _cancelling() -> bool:
    """Whether the running task has been asked to stop."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one model call did; handed to the ``on_batch`` observer hook."""

    items: int
    requests: int
    tokens: int
    padded_tokens: int
    seconds: float


@dataclass(eq=False, slots=True)
class _Request:
    future: asyncio.Future[Vectors]
    size: int
    arrival: int
    """Its place in the order requests were submitted (the oldest are served first)."""
    rows: list[Vectors | None] = field(default_factory=list)
    remaining: int = 0

    def alive(self) -> bool:
        return not self.future.done()


@dataclass(slots=True)
class _Pending(Generic[Item]):
    request: _Request
    index: int
    item: Item
    length: int


class _Turns:
    """Requests taking turns for the model: the oldest that hold one batch's worth of
    items, and at least ``min_turns`` of them; younger ones wait, by arrival."""

    __slots__ = ("items", "queued", "turns", "waiting")

    def __init__(self) -> None:
        self.turns: OrderedDict[_Request, None] = OrderedDict()
        """Requests taking turns, the next one first."""
        self.items = 0
        """Items waiting in those requests' lanes."""
        self.queued = 0
        """Items waiting in all of this group's lanes."""
        self.waiting: list[tuple[int, _Request]] = []
        """Heap of requests with items waiting but not in the turns yet, by arrival."""

    def fill(self, lanes: Mapping[_Request, Sized], batch: int, least: int) -> None:
        """Let the oldest waiting requests in while the turns hold less than ``batch``
        items or fewer than ``least`` requests."""
        while self.waiting and (self.items < batch or len(self.turns) < least):
            _, request = heapq.heappop(self.waiting)
            lane = lanes.get(request)
            if lane is not None and request not in self.turns:  # (else dropped: skipped)
                self.turns[request] = None
                self.items += len(lane)


class _FairQueue(Generic[Item]):
    """Items waiting for the model, one lane per request: the oldest requests first, in
    turns, small and large requests side by side.

    Items are taken in turn (round robin) from the oldest requests that hold one batch's
    worth of items, at least ``min_turns`` of them; a younger request takes its place in
    the turns as an older one is done. Requests of up to a batch of items and larger ones
    take turns apart, and alternate. So:

    * under sustained load requests finish in about the order they came. Turns among
      *every* request in flight spread each batch over all of them (64 items from about
      60 requests): in a measured flood at 4x capacity, 256 requests of 8 inputs advanced
      together, none finished before its deadline, and 2,216 of 19,935 inputs embedded
      went into an answer;
    * a small request is not held back by large ones queued before it, however many: it
      gets every other item. A first-come queue made a 1-input request wait for all of a
      1,024-input one (530 ms with a 1 ms-per-item model, tens of seconds for a real one
      on a CPU), and turns among the oldest requests alone, for the first of 8 such.

    The same face as the ``asyncio.Queue`` it replaces: ``put`` waits while ``maxsize``
    items wait (unless its request has none waiting: at most one item per request past
    ``maxsize``); ``get`` waits for an item; ``get_nowait`` raises ``asyncio.QueueEmpty``.
    ``drop`` forgets a request's items (it was cancelled or failed)."""

    def __init__(self, maxsize: int, batch: int = 1, min_turns: int = 8) -> None:
        self._lanes: dict[_Request, deque[_Pending[Item]]] = {}
        self._small, self._large = _Turns(), _Turns()
        self._large_next = False
        """Whose item is next when both small and large requests wait."""
        self._maxsize = maxsize
        self._batch = batch
        self._min_turns = min_turns
        self._space = asyncio.Event()
        self._space.set()
        self._ready = asyncio.Event()

    def qsize(self) -> int:
        return self._small.queued + self._large.queued

    def empty(self) -> bool:
        return self.qsize() == 0

    def clear(self) -> None:
        """Drop every waiting item (the batcher is closing)."""
        self._lanes.clear()
        self._small, self._large = _Turns(), _Turns()
        self._taken()

    def _group(self, size: int) -> _Turns:
        """The turns of requests of ``size`` items."""
        return self._large if size > self._batch else self._small

    async def put(self, pending: _Pending[Item]) -> None:
        request = pending.request
        # full: a request with nothing queued still gets its turn's item in (the bound is
        # passed by at most one item per request in flight). Otherwise the requests that
        # waited first, large ones, took every freed place, and a 1-input request waited
        # behind most of their items
        while self.qsize() >= self._maxsize and self._lanes.get(request):
            self._space.clear()
            await self._space.wait()
        if not request.alive():
            return
        group = self._group(request.size)
        lane = self._lanes.get(request)
        if lane is None:  # (again, if its earlier items were all taken: by its arrival)
            lane = self._lanes[request] = deque()
            heapq.heappush(group.waiting, (request.arrival, request))
        elif request in group.turns:
            group.items += 1
        lane.append(pending)
        group.queued += 1
        self._ready.set()

    def get_nowait(self) -> _Pending[Item]:
        while self.qsize():
            for group in (
                (self._large, self._small) if self._large_next else (self._small, self._large)
            ):
                group.fill(self._lanes, self._batch, self._min_turns)
                if group.turns:
                    break
            else:
                break
            request = next(iter(group.turns))
            if not request.alive():
                self.drop(request)  # cancelled or failed: its items are not embedded
                continue
            lane = self._lanes[request]
            pending = lane.popleft()
            group.items -= 1
            group.queued -= 1
            if lane:
                group.turns.move_to_end(request)  # the next request's turn
            else:
                del group.turns[request], self._lanes[request]
            self._large_next = group is self._small
            self._taken()
            return pending
        self._taken()
        raise asyncio.QueueEmpty

    def drop(self, request: _Request) -> None:
        """Forget ``request``'s waiting items (no-op if it has none)."""
        lane = self._lanes.pop(request, None)
        if lane is None:
            return
        group = self._group(request.size)
        group.queued -= len(lane)
        if request in group.turns:
            del group.turns[request]
            group.items -= len(lane)
        self._taken()  # (its entry in the waiting heap is skipped when it comes up)

    def ahead(self, size: int) -> int:
        """About how many items are taken before a request of ``size`` items arriving now
        is done: its own, and those of its group queued before it, interleaved with as
        many of the other group's."""
        own = self._group(size)
        other = self._large if own is self._small else self._small
        mine = own.queued + size
        return mine + min(other.queued, mine)

    def _taken(self) -> None:
        """Items left: wake a waiting ``put``; none left: ``get`` waits again."""
        if self.empty():
            self._ready.clear()
        self._space.set()

    async def get(self) -> _Pending[Item]:
        while True:
            with contextlib.suppress(asyncio.QueueEmpty):
                return self.get_nowait()  # no await between the check and the take
            await self._ready.wait()


class MicroBatcher(Generic[Item]):
    """Coalesce items across concurrent ``submit`` calls into batched ``embed`` calls.

    Parameters
    ----------
    embed
        Blocking function from a list of items to an ``(n, dim)`` float32 array. It runs
        on the batcher's own threads, ``streams`` calls at a time.
    max_batch_size
        Most items in one batch.
    max_wait_s
        Longest the first item of a batch waits for more to arrive.
    max_batch_tokens
        Budget for ``len(chunk) * longest item`` in one call.
    max_queue
        Items that may wait; ``submit`` blocks beyond it.
    chunk_overhead
        Cost of one model call in padded-token units (splitting a batch is worth it
        only when it saves more padding than this).
    length
        Cost of one item (its token count); used to sort and to cut chunks.
    on_batch
        Observer hook called after each model call (metrics live there).
    max_queue_wait_s
        Most model work (seconds, estimated) that may be queued ahead of items submitted
        with a :data:`DEADLINE`; more, and ``submit`` refuses them (:class:`Overloaded`).
        ``None``: only the deadline itself bounds the wait. Items without a deadline are
        never refused.
    streams
        Batches computed at once, each on its own thread (``embed`` must be thread-safe
        when this is above 1).
    """

    def __init__(
        self,
        embed: Callable[[list[Item]], Vectors],
        *,
        max_batch_size: int = 64,
        max_wait_s: float = 0.005,
        max_batch_tokens: int = 16384,
        max_queue: int = 8192,
        chunk_overhead: int = 64,
        length: Callable[[Item], int] = len,  # type: ignore[assignment]  # Item is Sized here
        on_batch: Callable[[BatchStats], None] | None = None,
        name: str = "batcher",
        streams: int = 1,
        max_queue_wait_s: float | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if streams < 1:
            raise ValueError("streams must be >= 1")
        self._embed = embed
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue_wait_s = max_queue_wait_s
        self.max_batch_tokens = max_batch_tokens
        self.chunk_overhead = chunk_overhead
        self._length = length
        self._on_batch = on_batch
        self._queue: _FairQueue[Item] = _FairQueue(max_queue, batch=max_batch_size)
        self._arrivals = itertools.count()
        self._executor = ThreadPoolExecutor(max_workers=streams, thread_name_prefix=name)
        self._free_streams = streams
        self._streams = streams
        self._item_seconds: float | None = None
        """Model seconds per item on one stream, averaged over recent calls."""
        self._in_model = 0
        """Items taken from the queue for a batch and not computed yet."""
        self._stream_free = asyncio.Event()  # set while a stream is free
        self._stream_free.set()
        self._collector: asyncio.Task[None] | None = None
        self._computing: set[asyncio.Task[None]] = set()
        self._open: set[asyncio.Future[Vectors]] = set()
        """Futures of the requests not answered yet (``aclose`` fails what is left)."""
        self._closed = False

    # -- public API -------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Items waiting for the model (not counting the batch being computed)."""
        return self._queue.qsize()

    async def submit(self, items: Sequence[Item]) -> Vectors:
        """Embed ``items``; rows come back in the order given."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        self._ensure_started()
        if not items:
            return np.zeros((0, 0), dtype=np.float32)
        n = len(items)
        self._refuse(n)
        future = asyncio.get_running_loop().create_future()
        request = _Request(future, n, next(self._arrivals), [None] * n, n)
        self._open.add(request.future)
        request.future.add_done_callback(lambda _: self._done(request))
        try:
            for index, item in enumerate(items):
                if not request.alive():
                    break
                await self._queue.put(_Pending(request, index, item, self._length(item)))
        except asyncio.CancelledError:
            request.future.cancel()  # its queued items are skipped, not embedded
            raise
        return await request.future

    async def aclose(self) -> None:
        """Stop collecting; fail what is still queued; wait for the running batches."""
        self._closed = True
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        for task in list(self._computing):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        # queued, or taken off the queue by the collector but not computing: failed here
        for future in list(self._open):
            if not future.done():
                future.set_exception(RuntimeError("batcher closed"))
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> MicroBatcher[Item]:
        self._ensure_started()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _done(self, request: _Request) -> None:
        """Answered, or cancelled (a deadline passed) or failed: its waiting items go at
        once, not when their turn comes (they held places in the queue and counted in
        its depth)."""
        self._open.discard(request.future)
        self._queue.drop(request)

    @property
    def queue_wait_s(self) -> float:
        """About how long a one-item request submitted now would wait for its row (0
        before the model has run): what ``max_queue_wait_s`` is held against."""
        return self.expected_wait_s(1) or 0.0

    def expected_wait_s(self, size: int) -> float | None:
        """About how long a request of ``size`` items submitted now waits for its rows:
        its own items, those taken before them, and those already taken for batches and
        not computed yet (up to a batch per stream, and the next: without them the
        estimate was about 2 s short on 2 cores, half the wait of a 2 s limit);
        ``None`` before the model has run."""
        if self._item_seconds is None:
            return None
        return (self._queue.ahead(size) + self._in_model) * self._item_seconds / self._streams

    def _refuse(self, size: int) -> None:
        """:class:`Unreachable` if the context's :data:`DEADLINE` passes before the items
        queued ahead are done; :class:`Overloaded` if they take longer than
        ``max_queue_wait_s``. Under a backlog, requests reach a worker with seconds left;
        taken in, each held a place until its deadline and was cut off unanswered, while
        its slot kept the next record waiting in Kafka (measured: a worker embedding 100
        inputs/s answered nothing in time for the last 110 s of a flood). Refused only at
        the deadline, those answered in time waited most of it (26-27 s of 30 in a flood):
        callers who wait get answers within about ``max_queue_wait_s`` instead, and the
        others an immediate refusal to retry on."""
        deadline = DEADLINE.get()
        if deadline is None:
            return
        wait = self.expected_wait_s(size)
        if wait is None:
            return
        left = deadline - time.time()
        if wait > left:
            raise Unreachable(wait, left)
        if self.max_queue_wait_s is not None and wait > self.max_queue_wait_s:
            raise Overloaded(wait, self.max_queue_wait_s)

    # -- collector --------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._collector is None or self._collector.done():
            self._collector = asyncio.get_running_loop().create_task(self._collect_forever())

    async def _collect_forever(self) -> None:
        while True:
            batch = await self._collect()
            self._in_model += len(batch)
            await self._stream_free.wait()
            self._free_streams -= 1
            if self._free_streams == 0:
                self._stream_free.clear()
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._computing.add(task)
            task.add_done_callback(self._computing.discard)

    async def _collect(self) -> list[_Pending[Item]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0 and self._stream_free.is_set():
                break
            # wait for another item; while every stream is busy, also for one to free up
            getter = loop.create_task(self._queue.get())
            waiters: set[asyncio.Future[object]] = {getter}  # type: ignore[arg-type]
            idle: asyncio.Task[bool] | None = None
            if remaining <= 0:
                idle = loop.create_task(self._stream_free.wait())
                waiters.add(idle)  # type: ignore[arg-type]
            await asyncio.wait(
                waiters,
                timeout=remaining if remaining > 0 else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if idle is not None:
                idle.cancel()
            if getter.done():
                batch.append(getter.result())
            else:
                getter.cancel()
                try:
                    batch.append(await getter)  # it completed while being cancelled
                except asyncio.CancelledError:
                    # the getter's own cancellation is expected; the collector's is not
                    # to be swallowed (aclose would wait for it forever)
                    if _cancelling():
                        raise
        return [p for p in batch if p.request.alive()]

    # -- compute ----------------------------------------------------------------------

    def _chunks(self, batch: list[_Pending[Item]]) -> list[list[_Pending[Item]]]:
        """Cut a batch into length-sorted chunks that minimise padded work.

        Sorted by length, a chunk costs ``len(chunk) * longest`` padded tokens plus a fixed
        ``chunk_overhead`` per model call; dynamic programming over the cut points finds
        the cheapest split under the ``max_batch_tokens`` budget. This runs on the event
        loop: a GPU batch of 512 inputs took 31 ms to plan in a Python double loop on an
        H100's host, more than the GPU took to embed it. So the candidates for each cut are
        weighed in one numpy row, and where no chunk could pass the budget only the places
        where the length changes are cut points: moving an item from the start of one
        chunk to the end of the one before, whose longest is as long, never costs more.
        """
        ordered = sorted(batch, key=lambda p: p.length)
        lengths = np.maximum([p.length for p in ordered], 1)
        n = len(ordered)
        if n * int(lengths[-1]) <= self.max_batch_tokens:
            at = np.concatenate(([0], np.flatnonzero(np.diff(lengths)) + 1, [n]))
        else:
            at = np.arange(n + 1)
        best = np.full(len(at), np.inf)  # best[k]: cheapest cost of the first at[k] items
        best[0] = 0.0
        cut = [0] * len(at)
        for k in range(1, len(at)):
            j = int(at[k])
            longest = int(lengths[j - 1])
            # the budget's first start; 0 where cut points are only the length changes
            first = max(0, j - max(1, self.max_batch_tokens // longest))
            costs = best[first:k] + (j - at[first:k]) * longest  # chunk = items at[i] .. j-1
            i = k - 1 - int(np.argmin(costs[::-1]))  # the latest of equally cheap cuts
            best[k] = costs[i - first] + self.chunk_overhead
            cut[k] = i
        chunks: list[list[_Pending[Item]]] = []
        k = len(at) - 1
        while k > 0:
            chunks.append(ordered[at[cut[k]] : at[k]])
            k = cut[k]
        chunks.reverse()
        return chunks

    async def _run(self, batch: list[_Pending[Item]]) -> None:
        try:
            # all chunks go to the compute threads at once: a thread that finishes one
            # takes the next from the executor's queue without a round trip through the
            # event loop (which may be busy answering the previous chunk's requests)
            await asyncio.gather(*(self._run_chunk(chunk) for chunk in self._chunks(batch)))
        finally:
            self._free_streams += 1
            self._stream_free.set()

    async def _run_chunk(self, chunk: list[_Pending[Item]]) -> None:
        try:
            await self._compute_chunk([p for p in chunk if p.request.alive()])
        finally:
            self._in_model -= len(chunk)

    async def _compute_chunk(self, chunk: list[_Pending[Item]]) -> None:
        if not chunk:
            return
        try:
            vectors, seconds = await self._call(chunk)
        except Exception:
            log.debug("batch of %d failed; isolating", len(chunk), exc_info=True)
            await self._isolate(chunk)
            return
        per_item = seconds / len(chunk)
        self._item_seconds = (
            per_item if self._item_seconds is None else 0.9 * self._item_seconds + 0.1 * per_item
        )
        self._observe(chunk, seconds)
        self._deliver(chunk, vectors)

    async def _isolate(self, chunk: list[_Pending[Item]]) -> None:
        """Re-run a failed chunk one request at a time; fail only the guilty ones."""
        by_request: dict[int, list[_Pending[Item]]] = {}
        for p in chunk:
            by_request.setdefault(id(p.request), []).append(p)
        for group in by_request.values():
            request = group[0].request
            try:
                vectors, seconds = await self._call(group)
            except Exception as exc:
                if request.alive():
                    request.future.set_exception(exc)
                continue
            self._observe(group, seconds)
            self._deliver(group, vectors)

    async def _call(self, chunk: list[_Pending[Item]]) -> tuple[Vectors, float]:
        """``embed`` on a compute thread; its rows and the seconds it computed (not
        counting the wait for a free thread)."""
        items = [p.item for p in chunk]
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._timed, items)

    def _timed(self, items: list[Item]) -> tuple[Vectors, float]:
        started = time.perf_counter()
        vectors = self._embed(items)
        return vectors, time.perf_counter() - started

    def _deliver(self, chunk: list[_Pending[Item]], vectors: Vectors) -> None:
        if len(vectors) != len(chunk):
            error = RuntimeError(f"embed returned {len(vectors)} rows for {len(chunk)} items")
            for p in chunk:
                if p.request.alive():
                    p.request.future.set_exception(error)
            return
        for p, row in zip(chunk, vectors, strict=True):
            request = p.request
            if not request.alive():
                continue
            request.rows[p.index] = row
            request.remaining -= 1
            if request.remaining == 0:
                request.future.set_result(np.stack(request.rows))  # type: ignore[arg-type]

    def _observe(self, chunk: list[_Pending[Item]], seconds: float) -> None:
        if self._on_batch is None:
            return
        tokens = sum(p.length for p in chunk)
        padded = len(chunk) * max(p.length for p in chunk)
        requests = len({id(p.request) for p in chunk})
        try:
            self._on_batch(BatchStats(len(chunk), requests, tokens, padded, seconds))
        except Exception:  # an observer never breaks the data path
            log.exception("on_batch observer failed")
