"""Background producers of the training pipeline: an ordered map over worker processes,
and a thread that keeps the next items ready.

`ordered_map` tokenizes and pads batches in parallel while the accelerator runs the
step: `ordered_map(function, items, workers, ahead)` yields
`function(item)` in the order of `items`, exactly what the serial loop would, with at
most `ahead` results built and not yet taken. Workers are started with "spawn" (the
parent may hold JAX or TensorFlow threads, which "fork" would copy in a broken state),
ignore SIGINT (Ctrl-C in a terminal reaches the whole process group; the parent decides
when to stop), and are shut down, pending work cancelled, when the generator is closed
or garbage-collected, or raises.

`Prefetcher(items, depth)` pulls `items` (for training, the pair sampling and the
`ordered_map` above) on a thread while the training loop waits for the device, so that
the loop's next batch is ready when it asks; it counts the time the loop still waited.
"""

from __future__ import annotations

import collections
import multiprocessing
import queue
import signal
import threading
import time
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


class Prefetcher:
    """Iterates `items` on a background thread, at most `depth` items ahead: the same
    items in the same order, an exception of `items` raised in its place. `waited_s` is
    the total time the consumer was blocked waiting for an item. `close()` stops the
    thread, which then closes `items` (only that thread ever touches `items`)."""

    _END = object()

    def __init__(self, items: Iterator, depth: int):
        self.items = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self.finished = False
        self.waited_s = 0.0
        self.thread = threading.Thread(target=self._fill, args=(items,), name="simbert-prefetch", daemon=True)
        self.thread.start()

    def _put(self, entry) -> bool:
        while not self.stopping.is_set():
            try:
                self.items.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except BaseException as error:  # noqa: BLE001 (raised again in the consumer)
            self._put((None, error))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self):
        if self.finished:
            raise StopIteration
        started = time.perf_counter()
        item, error = self.items.get()
        self.waited_s += time.perf_counter() - started
        if error is not None or item is self._END:
            self.finished = True
            if error is not None:
                raise error
            raise StopIteration
        return item

    def close(self) -> None:
        self.stopping.set()
        self.finished = True
        self.thread.join()
