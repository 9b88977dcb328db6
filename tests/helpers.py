"""Test helpers: tiny random checkpoints in the released format, padded batches,
gradients on whichever backend the tests run, short training recipes, the `simbert`
command run in a subprocess, and bert4keras' outputs shared by the processes of a test
session."""

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np

from reference.invoke import RUNNER, run_bert4keras
from simbert.checkpoints import write_tf_checkpoint
from simbert.config import TrainConfig
from simbert.directories import checkpoint_dirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The directory (set by conftest.py for a whole test session: its workers and the JAX
# rerun of test_jax_backend.py) where `run_reference` keeps bert4keras' outputs.
REFERENCE_CACHE = "SIMBERT_TEST_REFERENCE_CACHE"

# Odd sizes on purpose: 3 heads of 6, a vocabulary and FFN width that are not powers of 2.
TINY_CONFIG = {
    "vocab_size": 97,
    "hidden_size": 18,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "intermediate_size": 37,
    "hidden_act": "gelu",
    "max_position_embeddings": 40,
    "type_vocab_size": 2,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "initializer_range": 0.02,
}


def random_bert_values(config, model="bert", seed=0, heads=True):
    """Google-named random arrays for a BERT/RoFormer checkpoint of `config`."""
    rng = np.random.default_rng(seed)
    hidden, inner = config["hidden_size"], config["intermediate_size"]

    def normal(*shape):
        return rng.normal(0.0, 0.2, shape).astype("float32")

    values = {
        "bert/embeddings/word_embeddings": normal(config["vocab_size"], hidden),
        "bert/embeddings/token_type_embeddings": normal(config["type_vocab_size"], hidden),
        "bert/embeddings/LayerNorm/gamma": 1 + normal(hidden),
        "bert/embeddings/LayerNorm/beta": normal(hidden),
    }
    if model == "bert":
        values["bert/embeddings/position_embeddings"] = normal(config["max_position_embeddings"], hidden)
    for i in range(config["num_hidden_layers"]):
        prefix = f"bert/encoder/layer_{i}/"
        for name in ("attention/self/query", "attention/self/key", "attention/self/value", "attention/output/dense"):
            values[prefix + name + "/kernel"] = normal(hidden, hidden)
            values[prefix + name + "/bias"] = normal(hidden)
        values[prefix + "intermediate/dense/kernel"] = normal(hidden, inner)
        values[prefix + "intermediate/dense/bias"] = normal(inner)
        values[prefix + "output/dense/kernel"] = normal(inner, hidden)
        values[prefix + "output/dense/bias"] = normal(hidden)
        for name in ("attention/output/LayerNorm", "output/LayerNorm"):
            values[prefix + name + "/gamma"] = 1 + normal(hidden)
            values[prefix + name + "/beta"] = normal(hidden)
    if heads:
        values.update({
            "bert/pooler/dense/kernel": normal(hidden, hidden),
            "bert/pooler/dense/bias": normal(hidden),
            "cls/predictions/transform/dense/kernel": normal(hidden, hidden),
            "cls/predictions/transform/dense/bias": normal(hidden),
            "cls/predictions/transform/LayerNorm/gamma": 1 + normal(hidden),
            "cls/predictions/transform/LayerNorm/beta": normal(hidden),
            "cls/predictions/output_bias": normal(config["vocab_size"]),
        })
    return values


def write_model_dir(directory, config, model="bert", seed=0, heads=True, vocab=None):
    """A released-layout model directory: bert_config.json, vocab.txt, bert_model.ckpt."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "bert_config.json"), "w") as writer:
        json.dump(config, writer)
    tokens = vocab or ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
        f"w{i}" for i in range(config["vocab_size"] - 5)]
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as writer:
        writer.write("\n".join(tokens) + "\n")
    write_tf_checkpoint(random_bert_values(config, model, seed, heads), os.path.join(directory, "bert_model.ckpt"))
    return directory


def padded_batch(vocab_size, seed=0, batch=5, length=23):
    """`[CLS] a [SEP] b [SEP]` rows of random lengths, padded with 0."""
    rng = np.random.default_rng(seed)
    token_ids = np.zeros((batch, length), "int32")
    segment_ids = np.zeros((batch, length), "int32")
    for row in range(batch):
        row_length = int(rng.integers(6, length + 1)) if row else length
        source = int(rng.integers(2, row_length - 2))
        token_ids[row, :row_length] = rng.integers(4, vocab_size, row_length)
        token_ids[row, 0] = 2
        token_ids[row, source] = token_ids[row, row_length - 1] = 3
        segment_ids[row, source + 1:row_length] = 1
    return token_ids, segment_ids


def value_and_gradients(function, *args, upstream=None):
    """`function(*args)` and the gradients of `sum(upstream * function(*args))` with respect
    to each argument, on the active backend (`upstream` defaults to ones)."""
    if keras.backend.backend() == "jax":
        import jax

        outputs, pullback = jax.vjp(function, *args)
        weights = jax.numpy.ones_like(outputs) if upstream is None else jax.numpy.asarray(upstream, outputs.dtype)
        return outputs, pullback(weights)
    import tensorflow as tf

    args = [tf.convert_to_tensor(arg) for arg in args]
    with tf.GradientTape() as tape:
        for arg in args:
            tape.watch(arg)
        outputs = function(*args)
    weights = None if upstream is None else tf.cast(upstream, outputs.dtype)
    return outputs, tape.gradient(outputs, args, output_gradients=weights)


def tiny_config(output_dir, steps, **training):
    """configs/tiny.yaml on data_sample.json into `output_dir`, `steps` long, with
    `training` fields replaced."""
    config = TrainConfig.from_yaml(os.path.join(ROOT, "configs", "tiny.yaml"))
    config.data.train = os.path.join(ROOT, "data_sample.json")
    config.output.dir = str(output_dir)
    config.training.steps = steps
    for key, value in training.items():
        setattr(config.training, key, value)
    return config


def short_config(output_dir, steps, save_every=0, **training):
    """`tiny_config` saving every `save_every` steps (0: at the end only), logging every 2."""
    config = tiny_config(output_dir, steps, **training)
    config.output.save_every, config.output.log_every = save_every, 2
    return config


def steps_of(directory) -> list[int]:
    """The steps of the checkpoints in run directory `directory`, oldest first."""
    return [step for step, _ in checkpoint_dirs(str(directory))]


def simbert(*args, timeout=300):
    """`python -m simbert.cli *args` run from the repository root; the finished process."""
    return subprocess.run([sys.executable, "-m", "simbert.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


# Runs `simbert.cli.main` on each argument list of the JSON file argv[1] in turn, each
# command's exit status and its Python-level stdout and stderr written to argv[2].
COMMANDS_DRIVER = """
import contextlib, io, json, logging, sys
from simbert.cli import main
results = []
for arguments in json.load(open(sys.argv[1], encoding="utf-8")):
    stdout, stderr = io.StringIO(), io.StringIO()
    for handler in logging.getLogger().handlers:  # the first command's logging.basicConfig
        handler.setStream(stderr)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(arguments)
        except SystemExit as exit:  # argparse: 2 for a usage error, 0 after --help
            code = 0 if exit.code is None else exit.code if isinstance(exit.code, int) else 1
    results.append({"returncode": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()})
with open(sys.argv[2], "w", encoding="utf-8") as writer:
    json.dump(results, writer)
"""


def simbert_commands(workdir, *commands, timeout=600) -> list[subprocess.CompletedProcess]:
    """The `simbert` commands `commands` (argument lists) run one after the other in one
    new Python process from the repository root (`simbert.cli.main` each, as
    `python -m simbert.cli` runs it), so that the backend starts once, not once a
    command; a finished "process" per command: its exit status, stdout and stderr (what
    Python wrote; the native libraries' own lines are not separated)."""
    jobs, results = os.path.join(workdir, "commands.json"), os.path.join(workdir, "results.json")
    with open(jobs, "w", encoding="utf-8") as writer:
        json.dump([[str(argument) for argument in command] for command in commands], writer, ensure_ascii=False)
    process = subprocess.run([sys.executable, "-c", COMMANDS_DRIVER, jobs, results], capture_output=True, text=True,
                             cwd=ROOT, timeout=timeout)
    assert process.returncode == 0, process.stderr[-3000:]
    with open(results, encoding="utf-8") as reader:
        return [subprocess.CompletedProcess(command, result["returncode"], result["stdout"], result["stderr"])
                for command, result in zip(commands, json.load(reader))]


@contextlib.contextmanager
def lock_held_elsewhere(lock_class: str, path):
    """Another process holding `lock_class(path)` (e.g. "simbert.retrieval.IndexLock")
    for the block, which gets its `Popen`; killed (SIGKILL) at the end, its lock left
    stale."""
    module, name = lock_class.rsplit(".", 1)
    holder = subprocess.Popen([sys.executable, "-c", (
        f"import sys, time; from {module} import {name}; lock = {name}(sys.argv[1]); lock.acquire(); "
        "print('locked', flush=True); time.sleep(600)"), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def shell_environment() -> dict[str, str]:
    """This process's environment as a user's shell would have it: without
    TF_CPP_MIN_LOG_LEVEL (importing JAX sets it) and TF_XLA_FLAGS (a compilation cache set
    by a test), which a command started from here would keep as the user's own settings."""
    return {name: value for name, value in os.environ.items() if name not in ("TF_CPP_MIN_LOG_LEVEL", "TF_XLA_FLAGS")}


def error_lines(stderr: str) -> list[str]:
    """stderr without the backends' start-up log lines."""
    return [line for line in stderr.splitlines() if line.startswith("simbert")]


def backend_loaded(pid: int) -> bool:
    """Whether process `pid` has mapped TensorFlow's or JAX's native library."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as reader:
            maps = reader.read()
    except OSError:
        return False
    return "tensorflow" in maps or "jaxlib" in maps


def child_processes() -> list[int]:
    """PIDs of this process's children (from /proc, so exited-but-unreaped ones count),
    but multiprocessing's resource tracker, one per parent, which exits with it."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as reader:
                    fields = reader.read().rsplit(")", 1)[1].split()
                if int(fields[1]) != os.getpid():
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as reader:
                    command = reader.read()
            except OSError:  # exited meanwhile
                continue
            if b"resource_tracker" not in command:
                children.append(int(entry))
    return children


def _digest_of_files(paths) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as reader:
            digest.update(hashlib.sha256(reader.read()).digest())
    return digest.hexdigest()


def _reference_key(job: dict) -> str:
    """What a bert4keras job's output depends on: its fields but the output path, each
    path replaced by the contents of the file(s) it names (a checkpoint prefix: its
    files), and the runner's code."""
    fields = {}
    for name, value in sorted(job.items()):
        if name == "output":
            continue
        if isinstance(value, str) and os.path.isfile(value):
            value = {"file": _digest_of_files([value])}
        elif isinstance(value, str) and os.path.isabs(value) and glob.glob(glob.escape(value) + ".*"):
            value = {"files": _digest_of_files(glob.glob(glob.escape(value) + ".*"))}
        fields[name] = value
    with open(RUNNER, "rb") as reader:
        runner = hashlib.sha256(reader.read()).hexdigest()
    return hashlib.sha256(json.dumps([runner, fields], sort_keys=True).encode()).hexdigest()


def run_reference(jobs: list[dict], workdir: str) -> None:
    """`reference.invoke.run_bert4keras(jobs, workdir)`, but a job that a process of this
    test session already ran on files of the same contents (another worker, the outer run
    or the JAX rerun; bert4keras runs on TensorFlow either way) has its output copied
    from the session's cache ($SIMBERT_TEST_REFERENCE_CACHE); the others run in one
    subprocess as before and are added to it. A process that needs a job another is
    running waits for it (a lock file per job)."""
    cache = os.environ.get(REFERENCE_CACHE)
    if not cache or not os.path.isdir(cache):
        run_bert4keras(jobs, workdir)
        return
    keyed = sorted(((_reference_key(job), job) for job in jobs), key=lambda pair: pair[0])
    with contextlib.ExitStack() as locks:
        for key in sorted({key for key, _ in keyed}):  # one order in every process: no deadlock
            lock = locks.enter_context(open(os.path.join(cache, key + ".lock"), "w"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [job for key, job in keyed if not os.path.exists(os.path.join(cache, key))]
        if missing:
            run_bert4keras(missing, workdir)
        for key, job in keyed:
            stored = os.path.join(cache, key)
            if job in missing:
                with open(job["output"], "rb") as reader, open(stored + ".part", "wb") as writer:
                    writer.write(reader.read())
                os.replace(stored + ".part", stored)
            else:
                with open(stored, "rb") as reader, open(job["output"], "wb") as writer:
                    writer.write(reader.read())
