"""Checks of the arguments users pass (counts, sizes, sampling settings): each returns
the value or raises `ValueError` naming the argument and its valid range. The CLI's
argparse types are made from the same checks (`argument_type`), and `existing_path` /
`output_path` check a path argument before anything loads."""

from __future__ import annotations

import math
import os
from typing import Callable

from simbert.errors import missing_path, output_problem

# Keras dtype policies a model may compute in: `training.precision`, `SimBERT.from_pretrained`.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def check_precision(name: str, value) -> str:
    """One of `PRECISIONS`."""
    if value not in PRECISIONS:
        raise ValueError(f"{name} should be one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


def check_integer(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer in `[minimum, maximum]` (no upper bound when `maximum` is None)."""
    valid = isinstance(value, int) and not isinstance(value, bool)
    if not valid or value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and at most {maximum}"
        raise ValueError(f"{name} should be an integer of at least {minimum}{upper}, got {value!r}")
    return value


def check_probability(name: str, value) -> float:
    """A number in (0, 1]."""
    if not _is_number(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} should be a number in (0, 1], got {value!r}")
    return float(value)


def check_positive(name: str, value) -> float:
    """A finite number above 0."""
    if not _is_number(value) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} should be a finite number above 0, got {value!r}")
    return float(value)


def check_sampling(topk: int | None, topp: float | None, temperature: float, vocab_size: int) -> None:
    """Random sampling's settings: `topk` in [1, vocab_size] or None (all tokens), `topp`
    in (0, 1] or None, `temperature` finite and above 0."""
    if topk is not None:
        check_integer("topk", topk, 1, vocab_size)
    if topp is not None:
        check_probability("topp", topp)
    check_positive("temperature", temperature)


def argument_type(check: Callable, name: str, convert: Callable = int, **bounds) -> Callable[[str], object]:
    """An argparse `type`: `convert` the string, then `check(name, value, **bounds)`."""
    import argparse

    def parse(text: str):
        try:
            return check(name, convert(text), **bounds)
        except ValueError as error:
            message = str(error)
            if "should be" not in message:
                message = f"{name} should be a {convert.__name__}, got {text!r}"
            raise argparse.ArgumentTypeError(message) from None

    parse.__name__ = name
    return parse


def existing_path(what: str, directory: bool | None = False) -> Callable[[str], str]:
    """An argparse `type`: the path as given, if it exists and is a directory (when
    `directory`) or a file (either, when `directory` is None); else an error naming `what`."""
    import argparse

    def parse(text: str) -> str:
        if not os.path.exists(text):
            raise argparse.ArgumentTypeError(str(missing_path(what, text)))
        if directory is not None and os.path.isdir(text) != directory:
            expected, found = ("a directory", "a file") if directory else ("a file", "a directory")
            raise argparse.ArgumentTypeError(f"{what} {text} is {found}; expected {expected}")
        return text

    parse.__name__ = what
    return parse


def output_path(what: str, directory: bool = False) -> Callable[[str], str]:
    """An argparse `type`: the path as given, if a file (or a directory, when `directory`)
    can be written there (`simbert.errors.output_problem`); else an error naming `what`,
    before any model loads or any text is encoded."""
    import argparse

    def parse(text: str) -> str:
        if (problem := output_problem(what, text, directory)) is not None:
            raise argparse.ArgumentTypeError(str(problem))
        return text

    parse.__name__ = what
    return parse


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
