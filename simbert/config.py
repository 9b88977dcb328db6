"""Configuration dataclasses, validated with errors that name the key.

`BackboneConfig`: the network's sizes, read from bert_config.json / HF config.json.
`TrainConfig`: a training recipe read from YAML, e.g.
`configs/tiny.yaml: training.learning_rate should be float, got 'fast'`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from simbert.arguments import PRECISIONS
from simbert.batch_sampling import FILE_BATCHES
from simbert.errors import missing_path

MODEL_TYPES = ("bert", "roformer")
DATA_FORMATS = ("groups", "pairs", "labelled_pairs")
OBJECTIVES = ("simbert", "cosent", "cross_encoder")
LR_DECAYS = ("none", "linear")  # after the warm-up: constant, or linear to 0 at training.steps
# The options only some objectives use.
OBJECTIVE_OPTIONS = {
    "training.keep_generation": ("cosent",), "training.cosent_scale": ("cosent",),
    "training.teacher": ("simbert",), "training.distillation_weight": ("simbert",),
    "training.similarity_chunk": ("simbert",), "training.scale": ("simbert",),
    "training.similarity_weight": ("simbert", "cosent"), "training.mask_duplicates": ("simbert",),
    "data.mask_source": ("simbert",), "training.seq2seq_weight": ("simbert", "cosent"),
    "training.num_labels": ("cross_encoder",),
}
# What each objective trains on: the data formats it reads.
OBJECTIVE_FORMATS = {"simbert": ("groups", "pairs"), "cosent": ("labelled_pairs",),
                     "cross_encoder": ("labelled_pairs",)}
HIERARCHICAL_ALPHA = 0.4  # `hierarchical_position: true`, as bert4keras


@dataclass(frozen=True)
class BackboneConfig:
    """A BERT / RoFormer backbone, in bert_config.json's field names (Hugging Face's
    config.json uses the same ones for BERT and RoFormer).

    `embedding_size` None means `hidden_size` (otherwise a Dense maps embeddings to the
    hidden width); `model_type` "bert" has learned absolute positions, "roformer" rotary
    q/k and no position table, so it takes inputs of any length. `hierarchical_position`
    (BERT; bert4keras' argument: True is 0.4) is the alpha of hierarchical position
    decomposition, which stretches the n learned positions to n^2 (`max_length`).
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    embedding_size: int | None = None
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    model_type: str = "bert"
    hierarchical_position: bool | float | None = None

    def __post_init__(self):
        from simbert.layers import ACTIVATIONS  # here, not at the top: a recipe is checked before Keras loads

        source = "config"
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.type in ("int", "int | None") and value is not None and value <= 0:
                raise ValueError(f"{source}: {item.name} should be a positive integer, got {value}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"{source}: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"{source}: hidden_act {self.hidden_act!r} is not supported; "
                             f"expected one of {sorted(ACTIVATIONS)}")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"{source}: model_type {self.model_type!r} is not supported; "
                             f"expected one of {MODEL_TYPES}")
        if self.embedding_size == self.hidden_size:  # the same model as None: one spelling
            object.__setattr__(self, "embedding_size", None)
        alpha = self.hierarchical_position
        if alpha is True:
            object.__setattr__(self, "hierarchical_position", HIERARCHICAL_ALPHA)
        elif alpha is False:
            object.__setattr__(self, "hierarchical_position", None)
        elif alpha is not None and not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
            raise ValueError(f"{source}: hierarchical_position should be true or an alpha above 0 and below 1, "
                             f"got {alpha!r}")
        if self.hierarchical_position is not None and self.model_type != "bert":
            raise ValueError(f"{source}: hierarchical_position is for BERT's learned position table; "
                             f"{self.model_type} has none and takes inputs of any length already")

    @property
    def max_length(self) -> int | None:
        """The longest input in tokens: the position table's n, n^2 with
        `hierarchical_position`, None (any) for RoFormer."""
        if self.model_type != "bert":
            return None
        n = self.max_position_embeddings
        return n * n if self.hierarchical_position is not None else n

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def embedding_width(self) -> int:
        return self.embedding_size or self.hidden_size

    @staticmethod
    def hf_fixed() -> dict:
        """Hugging Face settings we do not implement, with the value we do."""
        from simbert.layers import LAYER_NORM_EPSILON

        return {"layer_norm_eps": LAYER_NORM_EPSILON, "position_embedding_type": "absolute", "rotary_value": False}

    @classmethod
    def from_dict(cls, values: dict, source: str = "config", **overrides) -> "BackboneConfig":
        """From a bert_config.json or HF config.json mapping; keys we do not use are
        ignored, HF settings we do not implement (`hf_fixed()`) must hold our value, and
        `overrides` (e.g. `model_type`, `vocab_size`) replace what the mapping says."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: should be a JSON object, got {type(values).__name__}")
        for key, supported in cls.hf_fixed().items():
            if key in values and values[key] != supported:
                raise ValueError(f"{source}: {key} {values[key]!r} is not supported (only {supported!r})")
        names = {item.name for item in dataclasses.fields(cls)}
        known = {key: value for key, value in values.items() if key in names and value is not None}
        known.update(overrides)
        try:
            return _build(cls, known, source, "")
        except ValueError as error:
            raise ValueError(str(error).replace("config: ", f"{source}: ", 1)) from None

    def to_dict(self) -> dict[str, Any]:
        """bert_config.json (bert4keras and the releases read it; `model_type` is ours)."""
        values = dataclasses.asdict(self)
        if values["embedding_size"] in (None, self.hidden_size):
            del values["embedding_size"]
        if values["hierarchical_position"] is None:
            del values["hierarchical_position"]
        return values

    def to_hf_config(self) -> dict[str, Any]:
        """Hugging Face config.json for `BertModel` / `RoFormerModel`."""
        values = {**self.to_dict(), "layer_norm_eps": self.hf_fixed()["layer_norm_eps"], "pad_token_id": 0}
        if self.model_type == "bert":
            values["position_embedding_type"] = "absolute"
        else:
            values.update(embedding_size=self.embedding_width, rotary_value=False)
        return values


@dataclass
class ModelConfig:
    """Which network to train and where its starting weights come from."""

    model_type: str | None = None  # bert | roformer; default: what `pretrained` shows, else bert
    pretrained: str | None = None  # released directory: bert_config.json, vocab.txt, bert_model.ckpt*
    simplify_vocab: bool = True  # keep_tokens as the original when starting from `pretrained`
    config: dict | None = None  # bert_config fields for a randomly initialised model
    vocab: str | None = None  # vocab for a random model; None builds a char vocab from the data
    dropout_rate: float | None = None  # overrides hidden_dropout_prob
    # BERT: stretch the n learned positions to n^2 (true: alpha 0.4, or an alpha); null: the model's.
    hierarchical_position: bool | float | None = None


@dataclass
class DataConfig:
    train: str | list = "data_sample.json"  # a file, or a list of files read one after another
    # groups ({"text", "synonyms"[, "negatives"]}) | pairs (JSONL / TSV / CSV: the similar pairs)
    # | labelled_pairs (the same files, every row with its label: training.objective cosent / cross_encoder)
    format: str = "groups"
    max_chars: int = 32  # characters a text keeps (cut at punctuation first)
    on_error: str = "raise"  # raise | skip
    # pairs (and keep_generation's targets): a label below this is not a similar pair; a list: one per file
    pair_threshold: float | list = 1.0
    shuffle_buffer: int = 100_000  # groups held in memory for shuffling a streamed file
    # Several files: mixed (a batch mixes them, by their sizes) | round_robin (each batch from one
    # file, in turn) | proportional (each batch from one file, drawn by its size); simbert.batch_sampling.
    file_batches: str = "mixed"
    mask_source: bool = False  # RoFormer-Sim whole-word masking of the source (p = 0.5)
    # Batch lengths and target widths rounded up to multiples; None: 16 when the step is
    # XLA-compiled (one program per shape), else 1.
    length_step: int | None = None
    # Processes building batches ahead; None: cpu_count // 4 (at most 8); 0: in the training process.
    workers: int | None = None
    # groups: each pair's mined negatives ("negatives", `simbert mine`) added to its batch as extra
    # similarity columns, this many a pair (a batch whose groups have none is unchanged); 0: ignore them.
    negatives_per_pair: int = 1

    @property
    def max_tokens(self) -> int:
        """Tokens a training row `[CLS] a [SEP] b [SEP]` keeps, and the token limit of one
        text elsewhere in training (teacher, samples): `2 * max_chars`, as the original
        script's `maxlen * 2`. A character vocabulary gives about one token a character,
        so two texts of `max_chars` and their three special tokens nearly always fit."""
        return 2 * self.max_chars


@dataclass
class TrainingConfig:
    steps: int = 1000
    batch_size: int = 128  # rows; each pair gives two, so it must be even
    learning_rate: float = 2e-6
    weight_decay: float = 0.01  # AdamW; LayerNorm and bias excluded
    warmup_steps: int = 0
    lr_decay: str = "none"  # after warm-up: none (constant) | linear (to 0 at `steps`)
    clipnorm: float | None = None
    precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16
    jit_compile: bool | str = "auto"  # XLA-compile the step; auto: Platform.compiles_training_step (JAX yes, TF no)
    scale: float = 30.0  # similarity logits scale (30 SimBERT, 20 RoFormer-Sim)
    seq2seq_weight: float = 1.0
    similarity_weight: float = 1.0
    mask_duplicates: bool = True
    seed: int = 42
    # Directory for compiled programs, reused by a resumed run; "default": ~/.cache/simbert/xla; null: off.
    compilation_cache: str | None = "default"
    teacher: str | None = None  # model directory of a teacher for distillation
    distillation_weight: float = 100.0
    # auto: data parallel over every device the JAX backend sees (when more than one); none; data_parallel.
    distribution: str = "auto"
    devices: list | None = None  # device names (keras.distribution.list_devices()) to train on; None: all
    # Rows a forward pass holds activations for at a time (the cached contrastive step); None: the whole batch.
    similarity_chunk: int | None = None
    # simbert: seq2seq + in-batch similarity on similar texts; cosent: CoSENT on labelled pairs;
    # cross_encoder: a pair classifier (simbert.PairClassifier) on labelled pairs.
    objective: str = "simbert"
    cosent_scale: float = 20.0  # CoSENT's lambda
    # cosent: add the seq2seq loss on the similar pairs (label >= data.pair_threshold), both directions
    keep_generation: bool = False
    num_labels: int = 2  # cross_encoder: classes; every label an integer 0 .. num_labels - 1


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

    CHOICES: ClassVar[dict] = {
        "model.model_type": (None, *MODEL_TYPES),
        "data.format": DATA_FORMATS,
        "data.on_error": ("raise", "skip"),
        "data.file_batches": FILE_BATCHES,
        "training.lr_decay": LR_DECAYS,
        "training.precision": PRECISIONS,
        "training.jit_compile": (True, False, "auto"),
        "training.distribution": ("auto", "none", "data_parallel"),
        "training.objective": OBJECTIVES,
    }
    # Numbers checked when the recipe is read, before anything is built (None: unset).
    MINIMUMS: ClassVar[dict] = {
        "data.max_chars": 1, "data.shuffle_buffer": 1, "data.length_step": 1, "data.workers": 0,
        "data.negatives_per_pair": 0,
        "training.steps": 1, "training.warmup_steps": 0, "training.similarity_chunk": 1, "training.num_labels": 2,
        "output.save_every": 0, "output.keep": 1,
        "output.log_every": 1, "output.sample_every": 0,
    }
    POSITIVE: ClassVar[tuple] = ("training.learning_rate", "training.scale", "training.clipnorm",
                                 "training.cosent_scale")
    # Numbers that must be finite and at least 0; in [0, 1): probabilities.
    NON_NEGATIVE: ClassVar[tuple] = ("training.weight_decay", "training.seq2seq_weight",
                                     "training.similarity_weight", "training.distillation_weight")
    PROBABILITIES: ClassVar[tuple] = ("model.dropout_rate",)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "TrainConfig":
        config = _build(cls, data, source, "")
        for key, choices in cls.CHOICES.items():
            section, name = key.split(".")
            value = getattr(getattr(config, section), name)
            if value not in choices:
                raise ValueError(f"{source}: {key} should be one of {choices}, got {value!r}")
        for key, minimum in cls.MINIMUMS.items():
            section, name = key.split(".")
            value = getattr(getattr(config, section), name)
            if value is not None and value < minimum:
                raise ValueError(f"{source}: {key} should be at least {minimum}, got {value!r}")
        for key in cls.POSITIVE:
            section, name = key.split(".")
            value = getattr(getattr(config, section), name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{source}: {key} should be a finite number above 0, got {value!r}")
        for key in cls.NON_NEGATIVE:
            section, name = key.split(".")
            value = getattr(getattr(config, section), name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{source}: {key} should be a finite number of at least 0, got {value!r}")
        for key in cls.PROBABILITIES:
            section, name = key.split(".")
            value = getattr(getattr(config, section), name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{source}: {key} should be at least 0 and below 1 (a probability), got {value!r}")
        alpha = config.model.hierarchical_position
        if alpha not in (None, True, False) and not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
            raise ValueError(f"{source}: model.hierarchical_position should be true, false or an alpha above 0 "
                             f"and below 1, got {alpha!r}")
        if alpha and config.model.model_type == "roformer":
            raise ValueError(f"{source}: model.hierarchical_position is for BERT's learned position table; "
                             f"roformer has none and takes inputs of any length already")
        _check_objective(config, source)
        if config.training.objective == "cross_encoder":  # a row a pair
            if config.training.batch_size < 1:
                raise ValueError(f"{source}: training.batch_size should be at least 1 (pairs a step, a row each), "
                                 f"got {config.training.batch_size}")
        elif config.training.batch_size % 2 or config.training.batch_size < 2:
            raise ValueError(f"{source}: training.batch_size should be a positive even number "
                             f"(rows come in a->b, b->a pairs), got {config.training.batch_size}")
        return config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "TrainConfig":
        if not os.path.exists(path):
            raise missing_path("recipe", path)
        with open(path, encoding="utf-8") as reader:
            try:
                data = yaml.safe_load(reader) or {}
            except yaml.YAMLError as error:
                raise ValueError(f"{path}: not valid YAML: {error}") from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_objective(config: TrainConfig, source: str) -> None:
    """`training.objective` against the data it reads and the options only another objective has."""
    training, data = config.training, config.data
    files = data.train if isinstance(data.train, list) else [data.train]
    if not files or not all(isinstance(path, str) and path for path in files):
        raise ValueError(f"{source}: data.train should be a file or a non-empty list of files, got {data.train!r}")
    thresholds = data.pair_threshold
    if isinstance(thresholds, list) and (len(thresholds) != len(files) or not all(
            isinstance(value, (int, float)) and not isinstance(value, bool) for value in thresholds)):
        raise ValueError(f"{source}: data.pair_threshold should be a number, or a list of one number per file of "
                         f"data.train ({len(files)}), got {thresholds!r}")
    formats = OBJECTIVE_FORMATS[training.objective]
    if data.format not in formats:
        hint = ("labelled_pairs (every row with its label)" if training.objective != "simbert"
                else "groups or pairs (similar texts)")
        raise ValueError(f"{source}: training.objective {training.objective} reads data.format {hint}, "
                         f"got data.format {data.format!r}")
    # An option of other objectives only, set to other than its default, is refused (not ignored).
    defaults = TrainConfig()
    for key, objectives in OBJECTIVE_OPTIONS.items():
        section, name = key.split(".")
        value, default = getattr(getattr(config, section), name), getattr(getattr(defaults, section), name)
        if value != default and training.objective not in objectives:
            raise ValueError(f"{source}: {key} is for training.objective {' or '.join(objectives)}, "
                             f"not {training.objective}; leave it out")
    if config.output.sample_every and training.objective == "cross_encoder":
        raise ValueError(f"{source}: output.sample_every prints paraphrases, which a pair classifier "
                         f"(training.objective cross_encoder) does not generate; leave it out")


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


def _number_or_text(text: str) -> float | str:
    """`float(text)` for a number written as text (`1e-3`), else the text."""
    try:
        return float(text)
    except ValueError:
        return text


def _build(cls, data: Any, source: str, prefix: str):
    """`cls(**data)` with each value checked against its annotation; unknown keys and
    missing required fields are errors. Nested dataclasses come from nested mappings."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: {prefix.rstrip('.') or 'the file'} should be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"{source}: unknown key {prefix}{unknown[0]} (known: {sorted(fields)})")
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise ValueError(f"{source}: required field {prefix}{missing[0]} is missing")
    values = {}
    for name, value in data.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, value, source, f"{prefix}{name}.")
            continue
        if isinstance(value, str) and _matches(1.0, annotation) and not _matches(value, annotation):
            value = _number_or_text(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if not _matches(value, annotation):
            expected = str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
            raise ValueError(f"{source}: {prefix}{name} should be {expected}, got {value!r}")
        values[name] = float(value) if annotation is float else value
    return cls(**values)
