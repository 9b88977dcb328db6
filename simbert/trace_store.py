"""Traced programs kept on disk (JAX), so that a later process neither traces nor lowers
a function it has seen before.

JAX's persistent compilation cache keeps what XLA compiles, but a new process still
traces each function through the Keras layers and lowers it to StableHLO before it can
look the compiled program up, which costs a fresh process more per input shape than
loading a stored trace and finding its program (docs/benchmarks.md, "Figures behind the
code"). `jax.export` serializes the traced program (StableHLO with its input and output
structure); `jax.jit(exported.call)` compiles it, a cache hit when it was compiled before.

A stored trace is named by the SHA-256 of everything that decides it: the caller's key
(what the function computes: the model's config, dtypes and kernels, decoding options),
the shapes and dtypes of the weights and of the inputs, simbert's own source files, and
the versions and settings of Keras and JAX. It lives in `traces/` under JAX's compilation
cache directory, so the one switch (`simbert.compiled.use_compilation_cache`) turns both
on or off. Each file is the SHA-256 of its payload followed by the payload, written to a
temporary name and renamed; a file that does not verify or load is ignored and replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import keras

from simbert.atomic_files import write_atomically

SUBDIRECTORY = "traces"
SUFFIX = ".jaxexport"
DIGEST_BYTES = 32

logger = logging.getLogger(__name__)


def library_fingerprint() -> str:
    """SHA-256 of simbert's source files and of the Keras and JAX versions and settings
    that change what a function traces to."""
    import jax
    import jaxlib

    digest = hashlib.sha256()
    package = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(package)):
        if name.endswith(".py"):
            with open(os.path.join(package, name), "rb") as reader:
                digest.update(name.encode() + b"\0" + reader.read())
    settings = [keras.__version__, keras.config.floatx(), jax.__version__, jaxlib.__version__,
                jax.default_backend(), jax.config.jax_enable_x64, str(jax.config.jax_default_matmul_precision)]
    digest.update(json.dumps(settings).encode())
    return digest.hexdigest()


class TraceStore:
    """`load` and `save` of `jax.export.Exported` programs in `directory`."""

    def __init__(self, directory: str):
        self.directory = directory
        self.fingerprint = library_fingerprint()

    @classmethod
    def of_compilation_cache(cls) -> "TraceStore | None":
        """The store under JAX's compilation cache directory; None when none is set."""
        import jax

        cache = jax.config.jax_compilation_cache_dir
        return cls(os.path.join(cache, SUBDIRECTORY)) if cache else None

    def name(self, key: str, arguments) -> str:
        """The file name of the program `key` traces to for `arguments` (a pytree of
        arrays: the weights and the inputs)."""
        import jax

        leaves, structure = jax.tree_util.tree_flatten(arguments)
        described = [self.fingerprint, key, str(structure), [str(jax.typeof(leaf)) for leaf in leaves]]
        return hashlib.sha256(json.dumps(described).encode()).hexdigest() + SUFFIX

    def load(self, name: str):
        """The stored program `name`, or None (absent, or a file that does not verify or
        deserialize: it is then left for `save` to replace)."""
        from jax import export

        path = os.path.join(self.directory, name)
        try:
            with open(path, "rb") as reader:
                content = reader.read()
        except OSError:
            return None
        digest, payload = content[:DIGEST_BYTES], content[DIGEST_BYTES:]
        if hashlib.sha256(payload).digest() != digest:
            logger.warning("ignoring the stored trace %s: its checksum does not match its content", path)
            return None
        try:
            return export.deserialize(bytearray(payload))
        except Exception as error:  # a payload this JAX cannot read
            logger.warning("ignoring the stored trace %s: %s", path, error)
            return None

    def save(self, name: str, exported) -> None:
        """Write `exported` as `name`, atomically; a store that cannot be written (read-only,
        full) is skipped with a warning: the program still runs."""
        payload = bytes(exported.serialize())
        try:
            write_atomically(os.path.join(self.directory, name),
                             lambda writer: writer.write(hashlib.sha256(payload).digest() + payload), binary=True)
        except OSError as error:
            logger.warning("could not store a traced program in %s: %s", self.directory, error)
