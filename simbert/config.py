"""Training recipes: YAML files validated into dataclasses.

Unknown keys and wrong types are errors that name the key, e.g.
`configs/tiny.yaml: training.learning_rate should be float, got 'fast'`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml


@dataclass
class ModelConfig:
    """Which network to train and where its starting weights come from."""

    type: str = "bert"  # bert | roformer
    pretrained: str | None = None  # released directory: bert_config.json, vocab.txt, bert_model.ckpt*
    simplify_vocab: bool = True  # keep_tokens as the original when starting from `pretrained`
    config: dict | None = None  # bert_config fields for a randomly initialised model
    vocab: str | None = None  # vocab for a random model; None builds a char vocab from the data
    dropout_rate: float | None = None  # overrides hidden_dropout_prob


@dataclass
class DataConfig:
    train: str = "data_sample.json"
    format: str = "groups"  # groups ({"text", "synonyms"}) | pairs (JSONL / TSV / CSV)
    maxlen: int = 32  # characters a text keeps (cut at punctuation first)
    on_error: str = "raise"  # raise | skip
    pair_threshold: float = 1.0  # pairs: a label below this is not a similar pair
    shuffle_buffer: int = 100_000  # groups held in memory for shuffling a streamed file
    mask_source: bool = False  # RoFormer-Sim whole-word masking of the source (p = 0.5)
    pad_to_multiple: int = 1  # round batch lengths up (e.g. 8 on JAX: fewer recompilations)


@dataclass
class TrainingConfig:
    steps: int = 1000
    batch_size: int = 128  # rows; each pair gives two, so it must be even
    learning_rate: float = 2e-6
    weight_decay: float = 0.01  # AdamW; LayerNorm and bias excluded
    warmup_steps: int = 0
    clipnorm: float | None = None
    precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16
    jit_compile: bool = False  # XLA-compile the step (recompiles per new batch shape; slower on CPU)
    scale: float = 30.0  # similarity logits scale (30 SimBERT, 20 RoFormer-Sim)
    seq2seq_weight: float = 1.0
    similarity_weight: float = 1.0
    mask_duplicates: bool = True
    seed: int = 42
    teacher: str | None = None  # released directory of a teacher for distillation
    distillation_weight: float = 100.0


@dataclass
class OutputConfig:
    dir: str = "runs/simbert"
    save_every: int = 500
    keep: int = 3
    log_every: int = 10
    sample_every: int = 0  # print gen_synonyms samples every N steps (0: never)
    sample_texts: list = field(default_factory=list)  # texts to paraphrase; default: 3 from the data


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    CHOICES = {
        "model.type": ("bert", "roformer"),
        "data.format": ("groups", "pairs"),
        "data.on_error": ("raise", "skip"),
        "training.precision": ("float32", "mixed_float16", "mixed_bfloat16"),
    }

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "TrainConfig":
        config = _build(cls, data, source, "")
        for key, choices in cls.CHOICES.items():
            section, name = key.split(".")
            value = getattr(getattr(config, section), name)
            if value not in choices:
                raise ValueError(f"{source}: {key} should be one of {choices}, got {value!r}")
        if config.training.batch_size % 2 or config.training.batch_size < 2:
            raise ValueError(f"{source}: training.batch_size should be a positive even number "
                             f"(rows come in a->b, b->a pairs), got {config.training.batch_size}")
        return config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "TrainConfig":
        with open(path, encoding="utf-8") as reader:
            try:
                data = yaml.safe_load(reader) or {}
            except yaml.YAMLError as error:
                raise ValueError(f"{path}: not valid YAML: {error}") from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _matches(value: Any, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or annotation)


def _build(cls, data: Any, source: str, prefix: str):
    if not isinstance(data, dict):
        raise ValueError(f"{source}: {prefix.rstrip('.') or 'the file'} should be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"{source}: unknown key {prefix}{unknown[0]} (known: {sorted(fields)})")
    values = {}
    for name, value in data.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, value, source, f"{prefix}{name}.")
            continue
        if not _matches(value, annotation):
            expected = str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
            raise ValueError(f"{source}: {prefix}{name} should be {expected}, got {value!r}")
        values[name] = float(value) if annotation is float else value
    return cls(**values)
