"""Which records make each training batch when a recipe trains on several files
(`data.file_batches`).

- `mixed` (the default): one sampler over every file's records, so a batch mixes the
  files in proportion to their sizes (a file of 5% of the records gives a batch of 64
  pairs about 3).
- `round_robin`: each batch is drawn from one file, the files in turn.
- `proportional`: each batch is drawn from one file, picked at random with probability
  proportional to its records (sentence-transformers' multi-dataset batch samplers).

Batches drawn from one file suit the objectives that compare within a task (CoSENT
compares labels only within one file; in-batch negatives from the same task are harder).
Each file then has its own sampler and shuffle buffer (`data.shuffle_buffer` records a
file), and `proportional` reads every file once more at the start to count its records.
The stream is a function of the seed alone: the batches after `start_step` steps are
those of an uninterrupted run.
"""

from __future__ import annotations

import collections
import functools
import itertools
import random
from typing import Callable, Iterable, Iterator, Sequence

from simbert.errors import DataError, NoUsableRecords

FILE_BATCHES = ("mixed", "round_robin", "proportional")


def batch_files(mode: str, sizes: Sequence[int], seed: int | str) -> Iterator[int]:
    """The number of the file each step's batch is drawn from, step 0 first:
    `round_robin` cycles through the files, `proportional` draws file i with probability
    `sizes[i] / sum(sizes)` from a generator seeded with `seed`."""
    if mode == "round_robin":
        return itertools.cycle(range(len(sizes)))
    if mode == "proportional":
        rng = random.Random(f"{seed}/files")
        return (rng.choices(range(len(sizes)), weights=sizes)[0] for _ in itertools.count())
    raise ValueError(f"data.file_batches must be one of {', '.join(FILE_BATCHES)}, got {mode!r}")


def sampled_batches(make_sampler: Callable[..., Iterable], read_records: Callable[..., Iterable],
                    files: Sequence[str], mode: str, seed: int, per_batch: int,
                    start_step: int = 0) -> Iterator[list]:
    """Endless lists of `per_batch` sampled records, one a step from `start_step` on.

    Args:
        make_sampler: `make_sampler(read, seed=seed)`, an endless seeded stream of records
            drawn from `read()` (e.g. a `PairSampler`).
        read_records: `read_records()` every file's records; `read_records(i)` file i's.
        files: the files' names (for `proportional`'s sizes and for errors).
        mode: one of `FILE_BATCHES`.
        seed: the run's seed (file i's sampler gets its own, derived from it).
        per_batch: records a batch.
        start_step: steps already taken; their records are drawn and dropped.

    Returns:
        The batches' records; in `mixed` mode exactly the stream of one sampler over all
        files seeded with `seed`.
    """
    if mode == "mixed":
        streams = [iter(make_sampler(read_records, seed=seed))]
        order: Iterator[int] = itertools.repeat(0)
    else:
        streams = [iter(make_sampler(functools.partial(read_records, index), seed=f"{seed}/file {index}"))
                   for index in range(len(files))]
        sizes = [1] * len(files)
        if mode == "proportional":
            sizes = [sum(1 for _ in read_records(index)) for index in range(len(files))]
            for path, size in zip(files, sizes):
                if not size:
                    raise DataError(f"data.train {path} holds no usable record (data.file_batches {mode} "
                                    f"draws whole batches from each file)")
        order = batch_files(mode, sizes, seed)

    def draw(index: int, count: int, keep: bool = True) -> list:
        try:
            if not keep:
                collections.deque(itertools.islice(streams[index], count), maxlen=0)
                return []
            return [next(streams[index]) for _ in range(count)]
        except NoUsableRecords as error:  # a reader's own errors name their file and line already
            if mode == "mixed":
                raise
            raise DataError(f"data.train {files[index]}: {error} (data.file_batches {mode} draws whole batches "
                            f"from each file)") from error

    taken = collections.Counter(next(order) for _ in range(start_step))
    for index in sorted(taken):
        draw(index, taken[index] * per_batch, keep=False)
    for index in order:
        yield draw(index, per_batch)
