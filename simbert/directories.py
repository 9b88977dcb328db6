"""Model and run directories: their file names, reading a directory into a tokenizer and
a backbone (`load_pretrained`, `build_transformer_model`), writing one
(`save_pretrained`), and finding the checkpoints of a training run.

A model directory is either the released layout (bert_config.json, vocab.txt,
bert_model.ckpt.*: Google BERT, SimBERT, RoFormer-Sim; ours add bert_model.safetensors,
the same tensors readable without TensorFlow, and write only that where TensorFlow is
not installed) or a Hugging Face one (config.json, vocab.txt, model.safetensors or
pytorch_model.bin). A training output directory holds `checkpoint-<step>/` model
directories.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

from simbert.atomic_files import StagedDirectory, is_leftover, remove_directory, write_atomically
from simbert.checkpoints import (
    CHECKPOINT_NAME,
    SAFETENSORS_NAME,
    assign_weights,
    holds_hf_weights,
    load_weights,
    model_values,
    read_safetensors,
    read_tf_checkpoint,
    read_variable_names,
    read_weights,
    tensorflow_importable,
    write_google_safetensors,
    write_tf_checkpoint,
)
from simbert.config import MODEL_TYPES, BackboneConfig
from simbert.errors import FileFormatError, missing_path, output_problem
from simbert.file_locks import FileLock
from simbert.models import Transformer
from simbert.tokenizer import SPECIAL_TOKENS, Tokenizer, check_special_tokens, load_vocab, save_vocab

logger = logging.getLogger(__name__)
T = TypeVar("T")

CONFIG_FILE = "bert_config.json"
HF_CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
WHITENING_FILE = "whitening.npz"
# Inside a training output directory.
CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_FILE = "training_state.npz"  # optimizer and random state, keyed by variable path
TRAINER_STATE_FILE = "trainer_state.json"  # step, model_type, the recipe; written last
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss.png"
LOCK_FILE = "training.lock"  # holds the PID of the run training into the directory
# A reader of a live run's newest checkpoint retries this often if rotation removes it.
READ_ATTEMPTS = 5


def read_config(config: str | os.PathLike | dict | BackboneConfig, **overrides) -> BackboneConfig:
    """A `BackboneConfig` from a bert_config.json / config.json path, its mapping, or
    another `BackboneConfig`, with `overrides` replacing fields."""
    if isinstance(config, BackboneConfig):
        return dataclasses.replace(config, **overrides)
    if isinstance(config, dict):
        return BackboneConfig.from_dict(config, **overrides)
    source = str(config)
    if not os.path.isfile(source):
        raise missing_path("config file", source)
    return BackboneConfig.from_dict(read_json(source, "a BERT config (JSON object)"), source, **overrides)


def read_json(path: str, expected: str) -> dict:
    """A JSON object from `path`; anything else raises `FileFormatError` saying what was expected."""
    try:
        with open(path, encoding="utf-8") as reader:
            values = json.load(reader)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FileFormatError(path, f"is not valid JSON ({error}); expected {expected}") from None
    if not isinstance(values, dict):
        raise FileFormatError(path, f"holds a JSON {type(values).__name__}; expected {expected}")
    return values


def read_trainer_state(checkpoint: str) -> dict:
    """A checkpoint's trainer_state.json: its step, model_type and recipe."""
    path = os.path.join(checkpoint, TRAINER_STATE_FILE)
    state = read_json(path, 'the trainer state {"step": ..., "config": ...}')
    if not isinstance(state.get("step"), int) or not isinstance(state.get("config"), dict):
        raise FileFormatError(path, f"lacks an integer \"step\" or a \"config\" mapping (keys: {sorted(state)})")
    return state


def is_hf_directory(path: str | os.PathLike) -> bool:
    return holds_hf_weights(path) and os.path.isfile(os.path.join(path, HF_CONFIG_FILE))


def config_path(directory: str | os.PathLike) -> str:
    """The directory's config file: config.json for an HF directory, else bert_config.json."""
    name = HF_CONFIG_FILE if is_hf_directory(directory) else CONFIG_FILE
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} has no {name}")
    return path


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """Complete checkpoints of a training run, oldest first, as `(step, path)`; a
    checkpoint is complete once its trainer state is written."""
    output_dir = str(output_dir)
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        step = name[len(CHECKPOINT_PREFIX):]
        if (name.startswith(CHECKPOINT_PREFIX) and step.isdigit()
                and os.path.isfile(os.path.join(path, TRAINER_STATE_FILE))):
            found.append((int(step), path))
    return sorted(found)


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> str:
    return os.path.join(str(output_dir), f"{CHECKPOINT_PREFIX}{step:07d}")


def remove_checkpoint(path: str) -> None:
    """Remove a checkpoint directory as one step for its readers: renamed away first (a
    reader sees it whole or not at all, see `with_latest_checkpoint`), then deleted."""
    remove_directory(path)


class DirectoryInUse(RuntimeError):
    """Another live process is training into the output directory."""


class RunLock(FileLock):
    """The lock of the run training into an output directory (`training.lock` in it)."""

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = str(output_dir)
        super().__init__(os.path.join(self.output_dir, LOCK_FILE))

    def in_use(self, owner: str) -> DirectoryInUse:
        return DirectoryInUse(f"{self.output_dir} is in use by another training run (PID {owner}, lock file "
                              f"{self.path}); wait for it to end or choose another output directory")


class RunDirectoryTaken(RuntimeError):
    """A fresh run was pointed at a directory that holds another run's checkpoints."""


class RunDirectory:
    """A training output directory: the checkpoints of one run (`checkpoint-<step>/`,
    each written whole or not at all, the last `keep` kept), its metrics.jsonl and loss
    curve, and the lock (`RunLock`) of the process training into it.

    Args:
        path: the output directory (created when the lock is first taken).

    Example:
        >>> run = RunDirectory("runs/tiny")
        >>> run.check_free(); run.check_unclaimed(overwrite=False)    # read-only checks
        >>> with run:                                                   # holds the lock
        ...     run.claim(resume=False, overwrite=False)
        ...     run.save_checkpoint(100, lambda staging: save_pretrained(model, staging, vocab), keep=3)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.lock = RunLock(self.path)

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.path, METRICS_FILE)

    @property
    def loss_plot_path(self) -> str:
        return os.path.join(self.path, LOSS_PLOT_FILE)

    def checkpoints(self) -> list[tuple[int, str]]:
        """Complete checkpoints, oldest first, as `(step, path)` (`checkpoint_dirs`)."""
        return checkpoint_dirs(self.path)

    # ------------------------------------------------------ read-only checks
    def check_free(self) -> None:
        """Raise `DirectoryInUse` if another live run trains into the directory."""
        if (problem := output_problem("output.dir", self.path, directory=True)) is not None:
            raise problem
        self.lock.check_free()

    def check_unclaimed(self, overwrite: bool) -> None:
        """For a fresh run: raise `RunDirectoryTaken` if the directory holds checkpoints
        of an earlier run, unless `overwrite` (they are then deleted by `claim`)."""
        existing = self.checkpoints()
        if existing and not overwrite:
            raise RunDirectoryTaken(
                f"{self.path} holds checkpoints of an earlier run (newest {existing[-1][1]}): pass --resume "
                f"(Trainer(resume=True)) to continue it, or --overwrite (Trainer(overwrite=True)) to delete them "
                f"and train afresh")

    def newest_readable(self, read: Callable[[str], T]) -> T | None:
        """`read(path)` of the newest checkpoint it succeeds on (each one skipped is logged
        with why); None when there is no checkpoint; `FileFormatError` when none reads."""
        existing = self.checkpoints()
        if not existing:
            return None
        problems = []
        for _, path in reversed(existing):
            try:
                return read(path)
            except (OSError, ValueError) as error:
                logger.warning("cannot resume from %s, skipping it: %s", path, error)
                problems.append(f"{os.path.basename(path)}: {error}")
        raise FileFormatError(self.path, "no checkpoint can be resumed from: " + "; ".join(problems))

    # ------------------------------------------------ writes (under the lock)
    def __enter__(self) -> "RunDirectory":
        """Take the lock (released on exit)."""
        self.lock.acquire()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.lock.release()

    def claim(self, resume: bool, overwrite: bool) -> None:
        """Make the directory this run's (the lock held): remove what a killed run left
        half-written or half-removed; for a fresh run, check again that no earlier run's
        checkpoints are there (`overwrite`: delete them) and start the metrics afresh."""
        if not self.lock.held:
            raise RuntimeError(f"claim {self.path}: take its lock first")
        for name in os.listdir(self.path):
            if name.startswith("." + CHECKPOINT_PREFIX) and is_leftover(name):
                shutil.rmtree(os.path.join(self.path, name), ignore_errors=True)
        if resume:
            return
        self.check_unclaimed(overwrite)
        existing = self.checkpoints()
        if existing:
            logger.warning("--overwrite: deleting the %d checkpoint(s) of %s", len(existing), self.path)
        for _, path in existing:
            remove_checkpoint(path)
        for path in (self.metrics_path, self.loss_plot_path):
            if os.path.exists(path):
                os.remove(path)

    def save_checkpoint(self, step: int, write: Callable[[str], None], keep: int) -> str:
        """`checkpoint-<step>`, written by `write(directory)` into a staged directory and
        swapped into place (`StagedDirectory`); then all but the newest `keep` are
        removed, never the one just written. Returns its path."""
        final = checkpoint_dir(self.path, step)
        with StagedDirectory(final) as staging:
            write(staging.temporary)
        older = [path for _, path in self.checkpoints() if path != final]
        for old in older[: max(len(older) - keep + 1, 0)]:
            remove_checkpoint(old)
        return final

    def keep_metrics_until(self, step: int) -> None:
        """Drop the metrics lines after `step` (logged after the checkpoint a run resumes
        from), so that each step appears once; rewritten atomically."""
        if not os.path.isfile(self.metrics_path):
            return
        with open(self.metrics_path, encoding="utf-8") as reader:
            lines = [line for line in reader if line.strip()]
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            write_atomically(self.metrics_path, lambda writer: writer.writelines(kept))


def resolve_model_directory(path: str | os.PathLike) -> str:
    """A model directory, or the latest checkpoint inside a training output directory."""
    path = str(path)
    if not os.path.isdir(path):
        raise missing_path("model directory", path)
    checkpoints = checkpoint_dirs(path)
    if checkpoints and not os.path.isfile(os.path.join(path, VOCAB_FILE)):
        return checkpoints[-1][1]
    return path


def infer_model_type(directory: str | os.PathLike) -> str | None:
    """'bert' or 'roformer': what the config files say (HF config, our bert_config.json,
    the trainer state), else what the weights show (a released RoFormer has no position
    table); None when neither tells."""
    for name in (HF_CONFIG_FILE, CONFIG_FILE, TRAINER_STATE_FILE):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as reader:
                try:
                    model_type = json.load(reader).get("model_type")
                except (json.JSONDecodeError, AttributeError):
                    continue
            if model_type in MODEL_TYPES:
                return model_type
    names = read_variable_names(directory) if not is_hf_directory(directory) else None
    if names and "bert/embeddings/word_embeddings" in names:
        return "bert" if "bert/embeddings/position_embeddings" in names else "roformer"
    return None


def build_backbone(
    config: str | os.PathLike | dict | BackboneConfig,
    checkpoint_path: str | os.PathLike | None = None,
    model_type: str | None = None,
    application: str = "encoder",
    with_pool: bool | str = False,
    with_mlm: bool | str = False,
    keep_tokens: Sequence[int] | None = None,
    dropout_rate: float | None = None,
    dtype=None,
    hierarchical_position: bool | float | None = None,
) -> Transformer:
    """A BERT/RoFormer from a bert_config.json / config.json (path or dict), with weights
    from `checkpoint_path` when given.

    `model_type` is the architecture ("bert" or "roformer"; default: the config's, else
    "bert" as in bert4keras). `checkpoint_path` may be a TF checkpoint prefix
    (`.../bert_model.ckpt`), a directory holding one, or an HF directory; `keep_tokens`
    keeps those vocabulary rows (see `load_vocab(simplified=True)`); `dropout_rate`
    overrides the config's hidden dropout; `dtype` is the layers' dtype policy;
    `hierarchical_position` (True: alpha 0.4, or an alpha; False: off; None: the
    config's) stretches BERT's n positions to n^2 (`BackboneConfig`).
    """
    overrides = {}
    if hierarchical_position is not None:
        overrides["hierarchical_position"] = hierarchical_position
    if model_type is not None:
        overrides["model_type"] = model_type
    if keep_tokens is not None:
        overrides["vocab_size"] = len(keep_tokens)
    if dropout_rate is not None:
        overrides["hidden_dropout_prob"] = dropout_rate
    transformer = Transformer(read_config(config, **overrides), application=application, with_pool=with_pool,
                              with_mlm=with_mlm, dtype=dtype)
    if checkpoint_path is not None:
        load_weights(transformer, checkpoint_path, keep_tokens=keep_tokens)
    return transformer


def build_transformer_model(config: str | os.PathLike | dict, checkpoint_path: str | os.PathLike | None = None,
                            model: str | None = None, **options) -> Transformer:
    """bert4keras' `build_transformer_model`: `build_backbone` with the architecture
    spelled `model`, as in the original scripts.

    Args:
        config: a bert_config.json / HF config.json path, or its fields as a dict.
        checkpoint_path: weights to load: a TF checkpoint prefix, a directory holding
            one, or an HF directory (None: random initialisation).
        model: "bert" or "roformer" (default: the config's, else "bert").
        **options: `build_backbone`'s `application` ("encoder" or "unilm"), `with_pool`,
            `with_mlm` (True, "linear"), `keep_tokens`, `dropout_rate`, `dtype` and
            `hierarchical_position` (True or an alpha: n learned positions reach n^2).

    Returns:
        The `Transformer` (a `keras.Model`).

    Example:
        >>> bert = build_transformer_model("chinese_simbert_L-12_H-768_A-12/bert_config.json",
        ...                                "chinese_simbert_L-12_H-768_A-12/bert_model.ckpt",
        ...                                with_pool="linear", application="unilm", keep_tokens=keep_tokens)
    """
    return build_backbone(config, checkpoint_path, model_type=model, **options)


def with_latest_checkpoint(path: str | os.PathLike, read: Callable[[str], T]) -> T:
    """`read(directory)` for the model directory `path` resolves to. For a training
    output, that is its newest checkpoint that reads: one whose files do not (a torn copy:
    `FileFormatError` or an OS error) is skipped with a warning naming it and why, as
    `--resume` skips it, and the next older one read; any other error (a bad argument)
    is raised at once. When the newest checkpoint of a run still training is removed by rotation
    mid-read (as one rename, see `remove_checkpoint`), the checkpoints are listed again."""
    path = str(path)
    if resolve_model_directory(path) == path:
        return read(path)
    torn: dict[str, str] = {}
    for _ in range(READ_ATTEMPTS):
        rotated = False
        for _, directory in reversed(checkpoint_dirs(path)):
            if directory in torn:
                continue
            try:
                return read(directory)
            except (OSError, FileFormatError) as error:  # a file that does not read, not a bad argument
                if not os.path.isdir(directory):
                    logger.info("%s was rotated away while being read; reading the newest checkpoint again",
                                directory)
                    rotated = True
                    break
                torn[directory] = " ".join(str(error).split())
                logger.warning("cannot read %s, using the next older checkpoint: %s", directory, torn[directory])
        if not rotated:
            break
    if not torn:
        raise FileNotFoundError(f"{path} holds no checkpoint that could be read (removed while reading)")
    raise FileFormatError(path, "no checkpoint can be read: " + "; ".join(
        f"{os.path.basename(directory)}: {why}" for directory, why in torn.items()))


@dataclasses.dataclass
class ModelFiles:
    """A model directory read in full, before any model is built (`read_model_files`):
    its tokenizer, config, architecture and weights (`keep_tokens`: the vocabulary rows
    kept by a simplified vocabulary)."""

    directory: str
    tokenizer: Tokenizer
    config: BackboneConfig
    model_type: str
    values: dict[str, np.ndarray]
    keep_tokens: list[int] | None = None

    def build(self, application: str = "unilm", with_pool: bool | str = "linear", with_mlm: bool | str = "linear",
              dropout_rate: float | None = None, dtype=None,
              hierarchical_position: bool | float | None = None) -> Transformer:
        """The backbone with these weights (building draws Keras' default seeds)."""
        backbone = build_backbone(self.config, None, self.model_type, application, with_pool, with_mlm,
                                  self.keep_tokens, dropout_rate, dtype, hierarchical_position)
        assign_weights(backbone, self.values, self.directory, self.keep_tokens)
        return backbone


def read_model_files(directory: str, model_type: str | None = None, simplify_vocab: bool = False,
                     pre_tokenize: Callable[[str], Iterable[str]] | None = None) -> ModelFiles:
    """Every file of the model directory `directory`, read (a torn one raises, naming it)."""
    vocab_path = os.path.join(directory, VOCAB_FILE)
    if not os.path.isfile(vocab_path):
        raise FileNotFoundError(f"{directory} has no {VOCAB_FILE}: not a model directory (a released "
                                f"checkpoint, a training output or a Hugging Face directory)")
    keep_tokens = None
    if simplify_vocab:
        token_dict, keep_tokens = load_vocab(vocab_path, simplified=True, startswith=list(SPECIAL_TOKENS))
    else:
        token_dict = load_vocab(vocab_path)
    check_special_tokens(token_dict, vocab_path)
    tokenizer = Tokenizer(token_dict, do_lower_case=True, pre_tokenize=pre_tokenize)
    # Every file is read before the (slow) model building, so a live run's rotation has
    # only the reading's moment to remove the directory.
    config = read_config(config_path(directory))
    kind = model_type or infer_model_type(directory) or "bert"
    return ModelFiles(directory, tokenizer, config, kind, read_weights(directory), keep_tokens)


def load_pretrained(
    path: str | os.PathLike,
    model_type: str | None = None,
    application: str = "unilm",
    with_pool: bool | str = "linear",
    with_mlm: bool | str = "linear",
    simplify_vocab: bool = False,
    pre_tokenize: Callable[[str], Iterable[str]] | None = None,
    dropout_rate: float | None = None,
    dtype=None,
    hierarchical_position: bool | float | None = None,
) -> tuple[Tokenizer, Transformer]:
    """The tokenizer and backbone of a model directory (released layout, HF, or a
    training output: its latest checkpoint). Defaults build SimBERT's heads (UniLM,
    linear pooler, MLM logits).

    `model_type` defaults to what the directory shows (`infer_model_type`), else "bert".
    `simplify_vocab` drops the tokens a char-level tokenizer can never produce and keeps
    the matching embedding rows, as the original fine-tuning script (`keep_tokens`).
    `hierarchical_position` overrides the directory's (see `build_backbone`).
    """
    def read(directory: str) -> tuple[Tokenizer, Transformer]:
        files = read_model_files(directory, model_type, simplify_vocab, pre_tokenize)
        return files.tokenizer, files.build(application, with_pool, with_mlm, dropout_rate, dtype,
                                            hierarchical_position)

    return with_latest_checkpoint(path, read)


def save_pretrained(model: Transformer, directory: str | os.PathLike, token_dict: dict[str, int]) -> None:
    """Write bert_config.json, vocab.txt, bert_model.safetensors and, where TensorFlow
    is importable, the released layout's bert_model.ckpt.* (what bert4keras loads)."""
    directory = str(directory)
    if len(token_dict) != model.config.vocab_size:
        raise ValueError(f"vocab has {len(token_dict)} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as writer:
        json.dump(model.config.to_dict(), writer, indent=2)
    save_vocab(os.path.join(directory, VOCAB_FILE), token_dict)
    values = model_values(model)
    write_google_safetensors(values, os.path.join(directory, SAFETENSORS_NAME))
    if tensorflow_importable():
        write_bert4keras_checkpoint(values, directory)


def write_bert4keras_checkpoint(values: dict[str, np.ndarray], directory: str) -> None:
    """bert_model.ckpt.* and the `checkpoint` file naming it, as the releases have them."""
    write_tf_checkpoint(values, os.path.join(directory, CHECKPOINT_NAME))
    with open(os.path.join(directory, "checkpoint"), "w", encoding="utf-8") as writer:
        writer.write(f'model_checkpoint_path: "{CHECKPOINT_NAME}"\n')


CONVERSIONS = ("bert4keras", "safetensors")


def convert_checkpoint(directory: str | os.PathLike, to: str) -> str:
    """Add the other weight format to a model directory: "bert4keras" writes
    bert_model.ckpt.* from bert_model.safetensors (needs TensorFlow), "safetensors" the
    reverse, beside the format the directory already has (a file of the target format
    already there is replaced); returns the path written."""
    directory = str(directory)
    if to not in CONVERSIONS:
        raise ValueError(f"convert: --to should be one of {CONVERSIONS}, got {to!r}")
    if to == "safetensors":
        target = os.path.join(directory, SAFETENSORS_NAME)
        write_google_safetensors(read_tf_checkpoint(directory), target)
        return target
    source = os.path.join(directory, SAFETENSORS_NAME)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"convert: {directory} has no {SAFETENSORS_NAME}")
    if not tensorflow_importable():
        raise RuntimeError("convert --to bert4keras writes a TensorFlow checkpoint: install tensorflow "
                           "(pip install tensorflow-cpu is enough)")
    write_bert4keras_checkpoint(read_safetensors(source), directory)
    return os.path.join(directory, CHECKPOINT_NAME)
