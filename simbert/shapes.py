"""The padded shapes of compiled paths.

A compiled function builds one program per distinct input shape (XLA on JAX; a trace on
TensorFlow without an input signature), so the paths that compile round their shapes up
to a few buckets, decided here: lengths to multiples of `length_step` up to
`LINEAR_LENGTH` tokens, past it to multiples of a step that doubles with each doubling of
the length (so long texts add 16 buckets an octave, not one every `length_step`, and pad
by at most 1/16), at most `max_length`; batch rows to powers of two (at most the batch
size) unless `pad_rows` is off. Padded positions are token id 0 (masked as padding); padded rows are cut off by
the caller. A path that compiles once for any shape (a TensorFlow graph with unknown
dimensions) uses `length_step=1, pad_rows=False`: no padding beyond the longest row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Lengths up to this are rounded to multiples of `length_step`; longer ones more coarsely.
LINEAR_LENGTH = 512


@dataclass(frozen=True)
class ShapeBuckets:
    length_step: int = 16
    max_length: int = 512
    pad_rows: bool = True

    def __post_init__(self):
        if self.length_step < 1 or self.max_length < 1:
            raise ValueError(f"length_step and max_length should be positive, got {self.length_step}, "
                             f"{self.max_length}")

    def length(self, length: int) -> int:
        """`length` rounded up to its bucket, capped at `max_length`: a multiple of
        `length_step` up to `LINEAR_LENGTH`; past it, of `length_step` times 2^k for a
        length in `(LINEAR_LENGTH 2^(k-1), LINEAR_LENGTH 2^k]`."""
        if length > self.max_length:
            raise ValueError(f"length {length} exceeds the longest bucket {self.max_length}")
        length = max(length, 1)
        step = self.length_step
        if self.length_step > 1 and length > LINEAR_LENGTH:
            step *= 1 << ((length - 1) // LINEAR_LENGTH).bit_length()
        return min(-(-length // step) * step, self.max_length)

    def rows(self, rows: int, batch_size: int) -> int:
        """`rows` rounded up to a power of two, at most `batch_size` (a full batch as it
        is); `rows` itself without `pad_rows`."""
        if rows >= batch_size or not self.pad_rows:
            return rows
        return min(1 << max(rows - 1, 0).bit_length(), batch_size)

    def shapes(self, batch_size: int) -> list[tuple[int, int]]:
        """Every (rows, length) shape `pad` can produce for batches of `batch_size`."""
        row_counts = sorted({self.rows(n, batch_size) for n in range(1, batch_size + 1)})
        lengths = sorted({self.length(n) for n in range(1, self.max_length + 1)})
        return [(rows, length) for rows in row_counts for length in lengths]

    def count(self, batch_size: int) -> int:
        """How many (rows, length) shapes `pad` can produce for batches of `batch_size`."""
        return len(self.shapes(batch_size))

    def training_shapes(self) -> int:
        """How many (length, target width) shapes training batches can take: a bucket
        length and a bucket width no longer than it."""
        lengths = sorted({self.length(n) for n in range(1, self.max_length + 1)})
        return sum(1 for length in lengths for width in lengths if width <= length)

    def shape(self, lengths: Sequence[int], batch_size: int) -> tuple[int, int]:
        """`(rows, length)` of the padded batch of sequences of these lengths."""
        return self.rows(len(lengths), batch_size), self.length(max(lengths))

    def pad(self, sequences: Sequence[Sequence[int]], batch_size: int) -> np.ndarray:
        """int32 `shape(lengths, batch_size)` array: each sequence at the start of its
        row, zeros after it and in the padding rows."""
        rows, length = self.shape([len(sequence) for sequence in sequences], batch_size)
        padding_rows = [[]] * (rows - len(sequences))
        return padded_ids([*sequences, *padding_rows], length)


def padded_ids(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """int32 array `(len(rows), length)`: each row at the start of its line, zeros after
    (`keras.utils.pad_sequences(..., padding="post")` without importing Keras, so that
    batch-building worker processes start without a backend). A row longer than
    `length` is a ValueError."""
    padded = np.zeros((len(rows), length), "int32")
    for index, row in enumerate(rows):
        if len(row) > length:
            raise ValueError(f"row {index} has {len(row)} ids, more than the padded length {length}")
        padded[index, :len(row)] = row
    return padded
