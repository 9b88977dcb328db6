"""An ordered map over background worker processes, a bounded number of items ahead.

Used by the training pipeline to tokenize and pad batches in parallel while the
accelerator runs the step: `ordered_map(function, items, workers, ahead)` yields
`function(item)` in the order of `items`, exactly what the serial loop would, with at
most `ahead` results built and not yet taken. Workers are started with "spawn" (the
parent may hold JAX or TensorFlow threads, which "fork" would copy in a broken state),
ignore SIGINT (Ctrl-C in a terminal reaches the whole process group; the parent decides
when to stop), and are shut down, pending work cancelled, when the generator is closed
or garbage-collected, or raises.
"""

from __future__ import annotations

import collections
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def ordered_map(function: Callable[[Item], Result], items: Iterable[Item], workers: int,
                ahead: int | None = None) -> Iterator[Result]:
    """`map(function, items)` computed by `workers` processes (0: in this process), at
    most `ahead` (default `2 * workers`) results in flight. `function` and the items
    must be picklable (a module-level function or a `functools.partial` of one)."""
    if workers <= 0:
        yield from map(function, items)
        return
    ahead = ahead or 2 * workers
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_ignore_interrupts)
    pending: collections.deque = collections.deque()
    items = iter(items)
    try:
        for item in items:
            pending.append(executor.submit(function, item))
            if len(pending) >= ahead:
                break
        while pending:
            result = pending.popleft().result()
            for item in items:
                pending.append(executor.submit(function, item))
                break
            yield result
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
