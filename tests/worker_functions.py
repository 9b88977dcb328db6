"""Functions the worker-process tests hand to spawned workers: this module imports
nothing heavy, so a worker that unpickles them starts in a moment."""


def fail_on_three(value: int) -> int:
    if value == 3:
        raise ValueError("item 3 is bad")
    return value * value
