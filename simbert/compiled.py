"""Functions of a model's variables compiled for the active backend, counting the programs
they build: `compile_function` makes a `JaxFunction` (one XLA program per input shape,
its trace optionally stored for later processes) or a `TensorFlowFunction` (a
`tf.function`, optionally traced once for inputs of any shape). `use_compilation_cache`
is the one, explicit, process-wide switch that keeps compiled programs on disk.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

import keras

from simbert.kernels import check_backend
from simbert.trace_store import TraceStore

logger = logging.getLogger(__name__)

DEFAULT_CACHE = "default"  # `compilation_cache` value meaning `default_cache_directory()`


def default_cache_directory() -> str:
    """`$XDG_CACHE_HOME/simbert/xla`, else `~/.cache/simbert/xla`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "simbert", "xla")


def use_compilation_cache(directory: str | None = DEFAULT_CACHE) -> str | None:
    """Keep the programs XLA compiles in `directory`, so a later process (a second
    `simbert generate`, a resumed training, a restarted server) loads them instead of
    compiling again; `None` leaves the backend's setting alone. Returns the directory.

    JAX: its persistent compilation cache, every program however quick to compile, and
    the traces `simbert.trace_store` keeps beside it. TensorFlow: XLA's persistent cache
    (`--tf_xla_persistent_cache_directory` in `TF_XLA_FLAGS`), read when XLA first
    compiles in the process, so it takes effect only if called before then.

    This changes process-wide settings (`jax.config`, the environment), so no library
    call makes it for you: the `simbert` commands and a training recipe's
    `training.compilation_cache` do, and Python code calls it once at startup.

    Args:
        directory: where to keep the programs; "default" is `default_cache_directory()`.

    Returns:
        The directory used, or None.

    Example:
        >>> simbert.use_compilation_cache()        # ~/.cache/simbert/xla
        >>> model = SimBERT.from_pretrained("runs/tiny")
    """
    if directory is None:
        return None
    directory = default_cache_directory() if directory == DEFAULT_CACHE else os.path.expanduser(directory)
    os.makedirs(directory, exist_ok=True)
    backend = check_backend()
    if backend == "jax":
        import jax

        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    elif backend == "tensorflow":
        flag = f"--tf_xla_persistent_cache_directory={directory}"
        flags = os.environ.get("TF_XLA_FLAGS", "")
        if "--tf_xla_persistent_cache_directory" not in flags:
            os.environ["TF_XLA_FLAGS"] = f"{flags} {flag}".strip()
    return directory


class CompiledFunction:
    """`function(*args)` compiled for the active backend (made by `compile_function`).
    `programs` counts the programs it holds; `traces` the times `function` was traced
    (a Python counter its body increments)."""

    def __init__(self, function: Callable):
        self.traces = 0
        self._function = function

    def _counted(self, *args):
        self.traces += 1
        return self._function(*args)

    @property
    def programs(self) -> int:
        return self.traces

    def prepare(self, calls: Sequence[tuple]) -> None:
        """Start building, in other threads, the programs that calls with these arguments
        (tuples of arrays, only their shapes and dtypes matter) will run, and return: a
        call with many new shapes then waits for the slowest program, not for their sum,
        and the host's tracing and loading overlaps the device's work. A no-op where one
        program serves every shape; a failure is raised by the call that needs that program."""

    def __call__(self, *args):
        raise NotImplementedError


class TensorFlowFunction(CompiledFunction):
    """A `tf.function` of `function`, XLA-compiled with `jit_compile`; with
    `dynamic_inputs` (`(rank, dtype)` of each argument) traced once with every dimension
    unknown, serving inputs of any shape. The variables are read by the graph itself."""

    def __init__(self, function: Callable, jit_compile: bool = True,
                 dynamic_inputs: Sequence[tuple[int, str]] | None = None):
        import tensorflow as tf

        super().__init__(function)
        signature = None
        if dynamic_inputs is not None:
            signature = [tf.TensorSpec((None,) * rank, dtype) for rank, dtype in dynamic_inputs]
        # No AutoGraph: the functions loop with keras.ops control flow already, and its
        # source conversion is a large part of a first call's cost (docs/benchmarks.md).
        # A partial, not the bound method: TensorFlow counts traces per code object, so
        # every instance's method would count as one function retraced ("triggered
        # tf.function retracing" warnings while a server compiles its samplers).
        self._graph = tf.function(functools.partial(CompiledFunction._counted, self), jit_compile=jit_compile,
                                  input_signature=signature, autograph=False)
        self._first_call = threading.Lock()
        self._called = threading.Event()

    def __call__(self, *args):
        if self._called.is_set():
            return self._graph(*args)
        # Calls that wait for another thread's first trace are counted by TensorFlow as
        # traces of their own ("triggered tf.function retracing" warnings, from a threaded
        # service's first requests); they wait here instead.
        with self._first_call:
            result = self._graph(*args)
            self._called.set()
            return result


class JaxFunction(CompiledFunction):
    """`jax.jit` of `function` with the variables passed in as arguments (through a
    StatelessScope), so later weight updates are seen; one program per input signature,
    built once (threads asking for the same new shape share one build). With a
    `program_key` and a compilation cache directory, the traced program is stored
    (`simbert.trace_store`) and a later process loads it instead of tracing."""

    def __init__(self, function: Callable, variables: Sequence, program_key: str | None = None):
        import jax

        super().__init__(function)
        self._variables = list(variables)
        self._program_key = program_key
        self._jitted = jax.jit(self._stateless)
        self._programs = {}  # input signature -> program, or the Future of one being compiled
        self._entries = threading.Lock()

    def _stateless(self, values, *args):
        with keras.StatelessScope(state_mapping=list(zip(self._variables, values))):
            return self._counted(*args)

    @property
    def programs(self) -> int:
        return len(self._programs)

    @staticmethod
    def _signature(args) -> tuple:
        import jax

        leaves, structure = jax.tree_util.tree_flatten(args)
        return structure, tuple(jax.typeof(leaf) for leaf in leaves)

    def __call__(self, *args):
        key = self._signature(args)
        program = self._programs.get(key)
        if program is None:
            self.prepare([args])
            program = self._programs[key]
        if isinstance(program, Future):
            try:
                built = program.result()
            except BaseException:
                with self._entries:
                    if self._programs.get(key) is program:
                        del self._programs[key]  # the next call builds it again
                raise
            self._programs[key] = program = built
        return program([v.value for v in self._variables], *args)

    def prepare(self, calls: Sequence[tuple]) -> None:
        values = [v.value for v in self._variables]
        threads = None
        with self._entries:
            for args in calls:
                key = self._signature(args)
                if key not in self._programs:
                    threads = threads or ThreadPoolExecutor(min(len(calls), os.cpu_count() or 1), "compile")
                    self._programs[key] = threads.submit(self._compiled, values, args)
        if threads is not None:
            threads.shutdown(wait=False)

    def _compiled(self, values, args):
        return self._program(values, args).lower(values, *args).compile()

    def _program(self, values, args) -> Callable:
        """The jitted function, or with a key and a store, the stored trace of
        `jitted(values, *args)` (exported and stored first if absent) compiled by `jax.jit`."""
        import jax

        store = TraceStore.of_compilation_cache() if self._program_key is not None else None
        if store is None:
            return self._jitted
        name = store.name(self._program_key + placement((values, args)), (values, args))
        exported = store.load(name)
        if exported is None:
            try:
                exported = jax.export.export(self._jitted)(values, *args)
            except Exception as error:  # e.g. a custom call jax.export does not serialize
                logger.info("running %s without storing its trace: %s", self._program_key[:80], error)
                return self._jitted
            store.save(name, exported)
        return jax.jit(exported.call)


def placement(arguments) -> str:
    """How the arrays among `arguments` that span several devices are laid out (their
    shardings, by position), '' when none does: a program traced for several devices is
    stored apart from the one-device program of the same shapes."""
    import jax

    spread = [f"{i}: {leaf.sharding}" for i, leaf in enumerate(jax.tree_util.tree_leaves(arguments))
              if isinstance(leaf, jax.Array) and len(leaf.sharding.device_set) > 1]
    return f" on devices {'; '.join(spread)}" if spread else ""


def compile_function(function: Callable, variables: Sequence, jit_compile: bool = True,
                     dynamic_inputs: Sequence[tuple[int, str]] | None = None,
                     program_key: str | None = None) -> CompiledFunction:
    """`function(*args)` compiled for the active backend: a `TensorFlowFunction` or a
    `JaxFunction`, as Keras splits its trainers by backend.

    Args:
        function: takes and returns tensors; may read `variables`.
        variables: the Keras variables it reads.
        jit_compile: XLA on TensorFlow (JAX always compiles with XLA).
        dynamic_inputs: TensorFlow only: `(rank, dtype)` of each argument; the function is
            then traced once with every dimension unknown, and serves inputs of any shape.
        program_key: JAX only: what `function` computes, besides the shapes of the weights
            and inputs and simbert's own code (the model's config and options); with it the
            traced programs are kept under the compilation cache. None: never kept.

    Returns:
        A `CompiledFunction`: call it like `function`; `programs` counts its programs.

    Example:
        >>> twice = compile_function(lambda x: 2 * x, [])
        >>> twice(np.ones((2, 3), "float32"))
    """
    if check_backend() == "tensorflow":
        return TensorFlowFunction(function, jit_compile, dynamic_inputs)
    return JaxFunction(function, variables, program_key)
