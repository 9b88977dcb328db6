"""Batches built ahead in worker processes: the same stream as the serial loop, resumable,
and no worker left behind however the consumer stops."""

import threading
import time

import numpy as np
import pytest
from worker_functions import fail_on_three

from helpers import child_processes
from simbert.config import DataConfig
from simbert.data import build_char_vocab, training_batches
from simbert.shapes import ShapeBuckets
from simbert.tokenizer import Tokenizer
from simbert.workers import Prefetcher, ordered_map

GROUPS = [[f"第{i}个问题怎么办", f"第{i}个问题如何处理", f"问题{i}该怎么解决"] for i in range(40)]


def take(batches, count):
    taken = [next(batches) for _ in range(count)]
    batches.close()
    return taken


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for (inputs, targets), (other_inputs, other_targets) in zip(first, second):
        for array, other in zip(inputs, other_inputs):
            np.testing.assert_array_equal(array, other)
        for name in targets:
            np.testing.assert_array_equal(targets[name], other_targets[name])


def test_ordered_map_keeps_order_and_stops_its_workers_on_error():
    assert list(ordered_map(fail_on_three, range(3), workers=2)) == [0, 1, 4]
    results = ordered_map(fail_on_three, range(10), workers=2, ahead=3)
    assert [next(results), next(results), next(results)] == [0, 1, 4]
    with pytest.raises(ValueError, match="item 3 is bad"):
        next(results)
    assert child_processes() == []


@pytest.mark.parametrize("mask_source", [False, True])
def test_worker_stream_equals_the_serial_stream_and_resumes(mask_source):
    tokenizer = Tokenizer(build_char_vocab(text for group in GROUPS for text in group))
    data = DataConfig(max_chars=16, shuffle_buffer=16, mask_source=mask_source)
    buckets = ShapeBuckets(16, data.max_tokens)

    def batches(start_step, workers):
        return training_batches(lambda: iter(GROUPS), tokenizer, data, batch_size=8, seed=3, start_step=start_step,
                                buckets=buckets, workers=workers)

    serial = take(batches(0, workers=0), 6)
    assert_same_batches(take(batches(0, workers=2), 6), serial)
    assert_same_batches(take(batches(4, workers=2), 2), serial[4:])  # resumed after step 4
    assert {inputs[0].shape[1] % 16 for inputs, _ in serial} == {0}
    assert child_processes() == []


def test_prefetcher_keeps_order_raises_in_place_and_closes_its_source():
    closed = threading.Event()

    def numbers(stop_at=None):
        try:
            for value in range(10):
                if value == stop_at:
                    raise ValueError(f"item {value} is bad")
                yield value
        finally:
            closed.set()

    assert list(Prefetcher(numbers(), depth=3)) == list(range(10))
    assert closed.is_set()

    closed.clear()
    failing = Prefetcher(numbers(stop_at=4), depth=2)
    assert [next(failing) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="item 4 is bad"):
        next(failing)
    with pytest.raises(StopIteration):
        next(failing)
    assert closed.is_set()

    closed.clear()
    stopped = Prefetcher(numbers(), depth=2)
    assert next(stopped) == 0
    stopped.close()
    assert not stopped.thread.is_alive() and closed.is_set()
    with pytest.raises(StopIteration):
        next(stopped)


def test_prefetcher_counts_the_time_its_consumer_waited():
    def slow():
        time.sleep(0.3)
        yield "ready"

    prefetched = Prefetcher(slow(), depth=1)
    assert next(prefetched) == "ready"
    assert prefetched.waited_s >= 0.25  # the source took 0.3 s, the consumer asked at once
    prefetched.close()


def test_prefetched_worker_batches_stop_their_workers_when_closed():
    tokenizer = Tokenizer(build_char_vocab(text for group in GROUPS for text in group))
    batches = Prefetcher(training_batches(lambda: iter(GROUPS), tokenizer, DataConfig(max_chars=16), batch_size=8,
                                          seed=3, workers=2), depth=2)
    next(batches)
    assert child_processes()
    batches.close()
    assert child_processes() == []
