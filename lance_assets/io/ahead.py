"""Reading ahead in order: many requests in flight, results handed out one by one as asked.

On an object store every read is a request of tens of milliseconds, so reading inputs one
after another spends the task's time waiting. ``ordered_ahead`` runs the fetches of the next
items in a small thread pool while the caller consumes the current one, and hands results out
strictly in item order (outputs are written in input order). Two bounds hold at every moment:
at most ``max_in_flight`` fetches started and not yet handed out, and their summed ``cost``
(bytes) at most ``max_bytes`` -- except that one item is always allowed, however large, so a
single input bigger than the budget still goes through. The item being consumed is not
counted: memory stays within ``max_bytes`` plus one item.

Nothing here knows the Lance format; fetches raise what they raise, and the first failure is
raised to the consumer in order, after the pending fetches are cancelled.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Pieces of one large range are cut no smaller than this (unless the budget is smaller), so a
#: request's fixed cost stays small against its bytes.
MIN_READ_PIECE = 1 << 20


def cut(start: int, end: int, budget: int, max_in_flight: int) -> list[tuple[int, int]]:
    """``[start, end)`` in pieces for reading ahead: ``max_in_flight`` of them fit in ``budget``,
    none under ``MIN_READ_PIECE`` unless the budget is smaller, none over the budget."""
    piece = max(1, min(budget, max(MIN_READ_PIECE, budget // max(1, max_in_flight))))
    return [(pos, min(end, pos + piece)) for pos in range(start, end, piece)]


def ordered_ahead(
    items: Iterable[T],
    fetch: Callable[[T], R],
    *,
    max_in_flight: int,
    max_bytes: int | None = None,
    cost: Callable[[T], int] | None = None,
    thread_name: str = "lance-assets-read",
) -> Iterator[tuple[T, R]]:
    """``(item, fetch(item))`` for each item, in order, with fetches running ahead (see module).

    ``max_in_flight`` <= 1 fetches in turn, in the caller's thread (local disks: no pool).
    """
    if max_in_flight <= 1:
        for item in items:
            yield item, fetch(item)
        return
    pending = iter(items)
    window: deque[tuple[T, int, Future[R]]] = deque()
    waiting: list[T] = []  # the next item, taken from ``items`` but over budget so far
    held = 0
    with ThreadPoolExecutor(max_in_flight, thread_name_prefix=thread_name) as pool:
        try:
            while True:
                while len(window) < max_in_flight:
                    if not waiting:
                        waiting.extend(itertools.islice(pending, 1))
                        if not waiting:
                            break
                    c = cost(waiting[0]) if cost is not None else 0
                    if window and max_bytes is not None and held + c > max_bytes:
                        break  # over budget: wait until the consumer takes the next result
                    item = waiting.pop()
                    window.append((item, c, pool.submit(fetch, item)))
                    held += c
                if not window:
                    return
                item, c, future = window.popleft()
                held -= c
                yield item, future.result()
        finally:
            for *_, future in window:
                future.cancel()
