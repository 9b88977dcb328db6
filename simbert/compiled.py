"""Functions of a model's variables compiled once per input shape, counting the programs
they build.

On JAX the function is `jax.jit`-ed with the variables passed in as arguments (through a
StatelessScope), so later weight updates are seen; each new input shape traces and
compiles a new program. With a `program_key` and a compilation cache directory, the
traced program is stored (`simbert.trace_store`) and a later process loads it instead of
tracing; `prepare` builds the programs of shapes a caller knows it will need in other
threads, ahead of the calls. On TensorFlow it is a `tf.function`, XLA-compiled unless
told otherwise; with `dynamic_inputs` it is traced once, for inputs of any shape.
"""

from __future__ import annotations

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

    JAX: its persistent compilation cache, every program however quick to compile.
    TensorFlow: XLA's persistent cache (`--tf_xla_persistent_cache_directory` in
    `TF_XLA_FLAGS`), read when XLA first compiles in the process, so it takes effect
    only if called before then.
    """
    if directory is None:
        return None
    directory = default_cache_directory() if directory == DEFAULT_CACHE else os.path.expanduser(directory)
    os.makedirs(directory, exist_ok=True)
    backend = keras.backend.backend()
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
    """`function(*args)` compiled for the active backend. `programs` counts the programs
    it holds (one per input shape on JAX, whether traced here or loaded); `traces` the
    times `function` was traced (a Python counter its body increments).

    Args:
        function: takes and returns tensors; may read `variables`.
        variables: the Keras variables it reads.
        jit_compile: XLA on TensorFlow (JAX always compiles with XLA).
        dynamic_inputs: TensorFlow only: `(rank, dtype)` of each argument; the function is
            then traced once with every dimension unknown, and serves inputs of any shape.
        program_key: JAX only: what `function` computes, besides the shapes of the weights
            and inputs and simbert's own code (the model's config and options); with it the
            traced programs are kept under the compilation cache. None: never kept.
    """

    def __init__(self, function: Callable, variables: Sequence, jit_compile: bool = True,
                 dynamic_inputs: Sequence[tuple[int, str]] | None = None, program_key: str | None = None):
        self.traces = 0

        def counted(*args):
            self.traces += 1
            return function(*args)

        backend = check_backend()
        self._programs = None
        self._prepare = None
        if backend == "tensorflow":
            import tensorflow as tf

            signature = None
            if dynamic_inputs is not None:
                signature = [tf.TensorSpec((None,) * rank, dtype) for rank, dtype in dynamic_inputs]
            # No AutoGraph: the functions loop with keras.ops control flow already, and its
            # source conversion took ~1.5 s of the first gen_synonyms call on CPU.
            graph = tf.function(counted, jit_compile=jit_compile, input_signature=signature, autograph=False)
            first_call = threading.Lock()
            called = threading.Event()

            def call(*args):
                if called.is_set():
                    return graph(*args)
                # Calls that wait for another thread's first trace are counted by TensorFlow
                # as traces of their own ("triggered tf.function retracing" warnings, from a
                # threaded service's first requests); they wait here instead.
                with first_call:
                    result = graph(*args)
                    called.set()
                    return result

            self._call = call
        else:  # jax
            import jax

            def stateless(values, *args):
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return counted(*args)

            jitted = jax.jit(stateless)
            self._programs = {}  # input signature -> program, or the Future of one being compiled

            def signature(args):
                leaves, structure = jax.tree_util.tree_flatten(args)
                return structure, tuple(jax.typeof(leaf) for leaf in leaves)

            entries = threading.Lock()  # threads asking for the same new shape share one build

            def call(*args):
                key = signature(args)
                program = self._programs.get(key)
                if program is None:
                    prepare([args])
                    program = self._programs[key]
                if isinstance(program, Future):
                    try:
                        built = program.result()
                    except BaseException:
                        with entries:
                            if self._programs.get(key) is program:
                                del self._programs[key]  # the next call builds it again
                        raise
                    self._programs[key] = program = built
                return program([v.value for v in variables], *args)

            def compiled(values, args):
                return self._program(jitted, program_key, values, args).lower(values, *args).compile()

            def prepare(calls):
                values = [v.value for v in variables]
                threads = None
                with entries:
                    for args in calls:
                        key = signature(args)
                        if key not in self._programs:
                            threads = threads or ThreadPoolExecutor(min(len(calls), os.cpu_count() or 1), "compile")
                            self._programs[key] = threads.submit(compiled, values, args)
                if threads is not None:
                    threads.shutdown(wait=False)

            self._call = call
            self._prepare = prepare

    @property
    def programs(self) -> int:
        return len(self._programs) if self._programs is not None else self.traces

    @staticmethod
    def _program(jitted, program_key: str | None, values, args) -> Callable:
        """`jitted`, or with a key and a store, the stored trace of `jitted(values, *args)`
        (exported and stored first if absent) compiled by `jax.jit`."""
        import jax

        store = TraceStore.of_compilation_cache() if program_key is not None else None
        if store is None:
            return jitted
        name = store.name(program_key, (values, args))
        exported = store.load(name)
        if exported is None:
            try:
                exported = jax.export.export(jitted)(values, *args)
            except Exception as error:  # e.g. a custom call jax.export does not serialize
                logger.info("running %s without storing its trace: %s", program_key[:80], error)
                return jitted
            store.save(name, exported)
        return jax.jit(exported.call)

    def prepare(self, calls: Sequence[tuple]) -> None:
        """Start building, in other threads, the programs that calls with these arguments
        (tuples of arrays, only their shapes and dtypes matter) will run, and return: a
        call with many new shapes then waits for the slowest program, not for their sum,
        and the host's tracing and loading overlaps the device's work. JAX only (a
        no-op elsewhere); a failure is raised by the call that needs that program."""
        if self._prepare is not None:
            self._prepare(calls)

    def __call__(self, *args):
        return self._call(*args)
