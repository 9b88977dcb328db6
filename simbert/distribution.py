"""The distribution policy: on how many devices and processes a step runs, and how its
batch is laid out over them. Built on `keras.distribution.DataParallel` (JAX's SPMD): the
batch is sharded along its first axis over every device, variables and optimizer state
are replicated, and the program is written for the global batch, so a loss over the batch
(the similarity softmax, the seq2seq token mean) keeps its one-device meaning: XLA inserts
the collectives. Several processes (hosts) join through `jax.distributed`
(`start_processes`, called by the `simbert` command or the user's script, never by the
library), each feeding its own rows of every global batch.

`Platform.distributes` says where this runs (JAX); on TensorFlow a request for
`data_parallel` stops with a one-line error.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import keras
import numpy as np

from simbert.kernels import Platform

MODES = ("auto", "none", "data_parallel")

# The environment variables `keras.distribution.initialize` reads; the command reads them too.
COORDINATOR_VARIABLE = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
PROCESSES_VARIABLE = "KERAS_DISTRIBUTION_NUM_PROCESSES"
PROCESS_ID_VARIABLE = "KERAS_DISTRIBUTION_PROCESS_ID"


class DistributionError(ValueError):
    """A distribution the recipe asks for cannot run here, or the batch does not divide."""


@dataclass(frozen=True)
class BatchLayout:
    """How each step's global batch of `batch_size` rows lies over `devices` (names,
    `keras.distribution.list_devices` style) in `processes` processes: every device holds
    `batch_size / len(devices)` rows, this process (`process_id`) feeds `local_rows` of
    them. `distribution` is the Keras `DataParallel` (None: one device, no distribution).

    Example:
        >>> layout = batch_layout("auto", None, batch_size=32)
        >>> layout.describe()
        'one device (cpu:0) in 1 process: each step's 32 rows on it'
    """

    batch_size: int
    devices: tuple[str, ...]
    processes: int
    process_id: int
    distribution: keras.distribution.DataParallel | None

    @property
    def rows_per_device(self) -> int:
        return self.batch_size // len(self.devices)

    @property
    def local_rows(self) -> slice:
        """The rows of the global batch this process feeds (its devices' rows, in order)."""
        per_process = self.batch_size // self.processes
        return slice(self.process_id * per_process, (self.process_id + 1) * per_process)

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files (process 0 does; the others only read)."""
        return self.process_id == 0

    def local_part(self, batch):
        """This process's rows of a global batch (a nested structure of arrays, rows first)."""
        if self.processes == 1:
            return batch
        return keras.tree.map_structure(lambda array: np.asarray(array)[self.local_rows], batch)

    def scope(self):
        """A context in which variables are created replicated and `fit` shards batches
        (the Keras distribution's scope; a no-op on one device). Keras keeps it per thread."""
        return self.distribution.scope() if self.distribution is not None else contextlib.nullcontext()

    def describe(self) -> str:
        """One line: the devices, the processes and how the batch is split."""
        names = device_range(self.devices)
        processes = f"{self.processes} process" + ("es" if self.processes > 1 else "")
        if self.distribution is None:
            return f"one device ({names}) in {processes}: each step's {self.batch_size} rows on it"
        return (f"data parallel over {len(self.devices)} devices ({names}) in {processes}: each step's "
                f"{self.batch_size} rows split {self.rows_per_device} a device"
                + (f", {self.local_rows.stop - self.local_rows.start} fed by each process" if self.processes > 1
                   else "")
                + "; variables and optimizer state replicated; the similarity softmax spans all rows")


def device_range(devices) -> str:
    """`cpu:0..3` for consecutive devices of one kind, else the names joined."""
    kinds = {name.split(":")[0] for name in devices}
    numbers = [int(name.split(":")[1]) for name in devices] if all(":" in name for name in devices) else []
    if len(devices) > 2 and len(kinds) == 1 and numbers == list(range(numbers[0], numbers[0] + len(numbers))):
        return f"{kinds.pop()}:{numbers[0]}..{numbers[-1]}"
    return ", ".join(devices)


def batch_layout(mode: str, devices: list[str] | None, batch_size: int,
                 platform: Platform | None = None) -> BatchLayout:
    """The layout `training.distribution` (`mode`) and `training.devices` ask for.

    Args:
        mode: "auto" (data parallel when the JAX backend sees more than one device, or
            `devices` names several), "none" (one device), or "data_parallel".
        devices: device names (`keras.distribution.list_devices()`), None for all.
        batch_size: the global batch, which must divide over the devices.
        platform: the backend's policy (default: the active one).

    Returns:
        A `BatchLayout`; a `DistributionError` naming the recipe field otherwise.
    """
    if mode not in MODES:
        raise DistributionError(f"training.distribution should be one of {MODES}, got {mode!r}")
    platform = platform or Platform.current()
    if not platform.distributes:
        if mode == "data_parallel" or devices:
            raise DistributionError(f"training.distribution: {mode} (training.devices: {devices}) needs "
                                    f"KERAS_BACKEND=jax; on {platform.backend} simbert trains on one device")
        return BatchLayout(batch_size, ("cpu:0",), 1, 0, None)
    chosen = chosen_devices(devices, keras.distribution.list_devices(), "training.devices names {unknown}, "
                            "not among this run's devices {available}")
    processes, process_id = process_count_and_id()
    if mode == "none" or (mode == "auto" and len(chosen) == 1):
        if processes > 1:
            raise DistributionError(f"training.distribution: {mode} runs on one device, but this run has "
                                    f"{processes} processes; use data_parallel (or auto)")
        return BatchLayout(batch_size, (chosen[0],), 1, 0, None)
    if batch_size % len(chosen):
        multiple = len(chosen) * max(1, batch_size // len(chosen))
        raise DistributionError(f"training.batch_size {batch_size} does not divide over {len(chosen)} devices; "
                                f"use a multiple of {len(chosen)} (e.g. {multiple})")
    # Each process feeds its own rows (`BatchLayout.local_part`): Keras need not shard the input.
    distribution = keras.distribution.DataParallel(devices=chosen, auto_shard_dataset=False)
    return BatchLayout(batch_size, tuple(chosen), processes, process_id, distribution)


def chosen_devices(devices: list[str] | None, available: list[str], refusal: str) -> list[str]:
    """`devices` (all `available` ones when None), each checked to be available; else a
    `DistributionError` of `refusal` formatted with `unknown` and `available`."""
    chosen = list(devices) if devices else available
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise DistributionError(refusal.format(unknown=unknown, available=available))
    return chosen


def process_count_and_id() -> tuple[int, int]:
    """This run's processes and this one's index (1, 0 without `jax.distributed`)."""
    import jax

    return jax.process_count(), jax.process_index()


@dataclass(frozen=True)
class ProcessGroup:
    """Where the processes of a multi-host run meet: `coordinator` `HOST:PORT` (process 0
    listens there), `num_processes` and this process's `process_id`."""

    coordinator: str
    num_processes: int
    process_id: int

    @classmethod
    def from_arguments(cls, coordinator: str | None, num_processes: int | None,
                       process_id: int | None, environment=None) -> "ProcessGroup | None":
        """The group the command line gives, else the `KERAS_DISTRIBUTION_*` variables
        (`keras.distribution.initialize`'s), else None (one process)."""
        environment = os.environ if environment is None else environment
        coordinator = coordinator or environment.get(COORDINATOR_VARIABLE)
        if num_processes is None and environment.get(PROCESSES_VARIABLE):
            num_processes = int(environment[PROCESSES_VARIABLE])
        if process_id is None and environment.get(PROCESS_ID_VARIABLE):
            process_id = int(environment[PROCESS_ID_VARIABLE])
        given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
        if all(value is None for value in given.values()):
            return None
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise DistributionError(f"a multi-process run needs --coordinator, --num-processes and --process-id "
                                    f"(or {COORDINATOR_VARIABLE}, {PROCESSES_VARIABLE}, {PROCESS_ID_VARIABLE}); "
                                    f"missing {', '.join(missing)}")
        coordinator = coordinator.split(",")[0]  # keras' form lists every job; the first coordinates
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise DistributionError(f"--process-id {process_id} should be in [0, {num_processes}) "
                                    f"(--num-processes {num_processes})")
        return cls(coordinator, num_processes, process_id)

    def join(self, heartbeat_timeout_s: int = 60, initialization_timeout_s: int = 300) -> None:
        """Join the other processes (`jax.distributed.initialize`): a process-wide step for
        the command or the user's script to take once, before the backend starts. A
        process that stops answering for `heartbeat_timeout_s` ends the others' run with
        an error."""
        import jax

        platform = Platform.current()
        if not platform.distributes:
            raise DistributionError(f"a multi-process run needs KERAS_BACKEND=jax (the backend is {platform.backend})")
        jax.distributed.initialize(coordinator_address=self.coordinator, num_processes=self.num_processes,
                                   process_id=self.process_id, heartbeat_timeout_seconds=heartbeat_timeout_s,
                                   initialization_timeout=initialization_timeout_s)


# ---------------------------------------------------------------------------- inference
@dataclass(frozen=True)
class InferenceLayout:
    """Where `SimBERT`'s compiled calls run: on `devices` (names, `keras.distribution`
    style), with `distribution` a Keras `DataParallel` over them (None: one device, as
    without a layout). With a distribution the model's variables are replicated
    (`replicate`) and each padded batch is split by rows over the devices (`rows`, `shard`),
    so one compiled program runs on all of them (SPMD).

    Example:
        >>> layout = inference_layout("auto")
        >>> layout.rows(5)                     # 8 on 4 devices, 5 on one
    """

    devices: tuple[str, ...]
    distribution: keras.distribution.DataParallel | None

    def rows(self, rows: int) -> int:
        """`rows` rounded up to a multiple of the device count (padding rows are dropped
        by the caller)."""
        if self.distribution is None:
            return rows
        return -(-rows // len(self.devices)) * len(self.devices)

    def replicate(self, variables) -> None:
        """Put a copy of each variable's value on every device (no-op on one device)."""
        if self.distribution is None:
            return
        for variable in variables:
            layout = self.distribution.get_variable_layout(variable)
            variable.assign(keras.distribution.distribute_tensor(variable.value, layout))

    def shard(self, array):
        """`array` (rows first, `rows()` of them) split by rows over the devices; as it is
        on one device."""
        if self.distribution is None:
            return array
        return keras.distribution.distribute_tensor(array, self.distribution.get_data_layout(array.shape))

    def describe(self) -> str:
        """One line: the devices a batch is split over."""
        if self.distribution is None:
            return f"one device ({device_range(self.devices)})"
        return (f"data parallel over {len(self.devices)} devices ({device_range(self.devices)}): each batch's "
                f"rows split over them, the model replicated")


def inference_layout(mode: str = "auto", devices: list[str] | None = None,
                     platform: Platform | None = None) -> InferenceLayout:
    """The layout `SimBERT(distribution=mode)` runs in; the modes mean what
    `training.distribution`'s do, over this process's own (local) devices.

    Args:
        mode: "auto" (all local devices when the JAX backend sees more than one), "none"
            (one device), or "data_parallel" (all local devices, or `devices`).
        devices: device names among this process's (`keras.distribution.list_devices()`
            style), None for all.
        platform: the backend's policy (default: the active one).

    Returns:
        An `InferenceLayout`; a `DistributionError` on TensorFlow for `data_parallel` or
        `devices`, and for an unknown mode or device.

    Example:
        >>> inference_layout("data_parallel").describe()   # JAX, 4 GPUs
        'data parallel over 4 devices (gpu:0..3): ...'
    """
    if mode not in MODES:
        raise DistributionError(f"distribution should be one of {MODES}, got {mode!r}")
    platform = platform or Platform.current()
    if not platform.distributes:
        if mode == "data_parallel" or devices:
            asked = f"distribution={mode!r}" + (f" on devices {devices}" if devices else "")
            raise DistributionError(f"{asked} needs KERAS_BACKEND=jax; on {platform.backend} simbert encodes on one "
                                    f"device")
        return InferenceLayout(("cpu:0",), None)
    chosen = chosen_devices(devices, local_devices(),
                            "devices {unknown} are not among this process's devices {available}")
    if mode == "none" or len(chosen) == 1:
        return InferenceLayout((chosen[0],), None)
    return InferenceLayout(tuple(chosen), keras.distribution.DataParallel(devices=chosen, auto_shard_dataset=False))


def local_devices() -> list[str]:
    """This process's devices of the default JAX backend, named as `keras.distribution.list_devices` names them."""
    import jax

    return [f"{device.platform.lower()}:{device.id}" for device in jax.local_devices()]
