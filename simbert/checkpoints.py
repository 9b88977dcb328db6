"""Weight formats: Google-BERT TF checkpoints (bert4keras, SimBERT, RoFormer-Sim
releases), the same tensors in safetensors (`bert_model.safetensors`: written and read
without TensorFlow), Hugging Face weight files, and a run's training state.

Every weight format is translated to the Google checkpoint names below, and those names
are mapped to the model's variables by attribute path. Kernels are stored (in, out).
Training state (optimizer slots, random generators) is stored keyed by variable path.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Sequence

import numpy as np

from simbert.atomic_files import replace_atomically
from simbert.errors import missing_path, unreadable
from simbert.models import Transformer

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "bert_model.ckpt"
SAFETENSORS_NAME = "bert_model.safetensors"  # the TF checkpoint's tensors under the same Google names
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# Google name -> attribute path on `Transformer`.
EMBEDDING_VARIABLES = {
    "bert/embeddings/word_embeddings": "token_embedding.embeddings",
    "bert/embeddings/token_type_embeddings": "segment_embedding.embeddings",
    "bert/embeddings/position_embeddings": "position_embedding.embeddings",
    "bert/embeddings/LayerNorm/gamma": "embedding_norm.gamma",
    "bert/embeddings/LayerNorm/beta": "embedding_norm.beta",
    "bert/encoder/embedding_hidden_mapping_in/kernel": "embedding_mapping.kernel",
    "bert/encoder/embedding_hidden_mapping_in/bias": "embedding_mapping.bias",
}
# Under `bert/encoder/layer_{i}/` -> under `blocks[i]`.
LAYER_VARIABLES = {
    "attention/self/query/kernel": "attention.query.kernel",
    "attention/self/query/bias": "attention.query.bias",
    "attention/self/key/kernel": "attention.key.kernel",
    "attention/self/key/bias": "attention.key.bias",
    "attention/self/value/kernel": "attention.value.kernel",
    "attention/self/value/bias": "attention.value.bias",
    "attention/output/dense/kernel": "attention.output_dense.kernel",
    "attention/output/dense/bias": "attention.output_dense.bias",
    "attention/output/LayerNorm/gamma": "attention_norm.gamma",
    "attention/output/LayerNorm/beta": "attention_norm.beta",
    "intermediate/dense/kernel": "intermediate.kernel",
    "intermediate/dense/bias": "intermediate.bias",
    "output/dense/kernel": "output_dense.kernel",
    "output/dense/bias": "output_dense.bias",
    "output/LayerNorm/gamma": "output_norm.gamma",
    "output/LayerNorm/beta": "output_norm.beta",
}
# Heads some releases lack: left at their initial values when absent.
HEAD_VARIABLES = {
    "bert/pooler/dense/kernel": "pooler.kernel",
    "bert/pooler/dense/bias": "pooler.bias",
    "cls/predictions/transform/dense/kernel": "mlm_dense.kernel",
    "cls/predictions/transform/dense/bias": "mlm_dense.bias",
    "cls/predictions/transform/LayerNorm/gamma": "mlm_norm.gamma",
    "cls/predictions/transform/LayerNorm/beta": "mlm_norm.beta",
    "cls/predictions/output_bias": "mlm_bias.bias",
}
# Rows indexed by token id, cut down by `keep_tokens`.
VOCAB_VARIABLES = ("bert/embeddings/word_embeddings", "cls/predictions/output_bias")

# Google name -> transformers' name: one table read both ways, by `hf_to_google` (loading
# an HF directory) and `google_to_hf` (`export --format hf`), as keras-hub keeps one
# convert_bert.py. `{prefix}` is the model type, `bert` or `roformer` (the two differ only
# there; RoFormer has no position table). Every Google `.../kernel` is a dense kernel,
# stored (in, out) here and (out, in) by torch: it is transposed in both directions.
HF_NAMES = {
    "bert/embeddings/word_embeddings": "{prefix}.embeddings.word_embeddings.weight",
    "bert/embeddings/token_type_embeddings": "{prefix}.embeddings.token_type_embeddings.weight",
    "bert/embeddings/position_embeddings": "{prefix}.embeddings.position_embeddings.weight",
    "bert/embeddings/LayerNorm/gamma": "{prefix}.embeddings.LayerNorm.weight",
    "bert/embeddings/LayerNorm/beta": "{prefix}.embeddings.LayerNorm.bias",
    "bert/encoder/embedding_hidden_mapping_in/kernel": "{prefix}.embeddings_project.weight",
    "bert/encoder/embedding_hidden_mapping_in/bias": "{prefix}.embeddings_project.bias",
    "bert/pooler/dense/kernel": "{prefix}.pooler.dense.weight",
    "bert/pooler/dense/bias": "{prefix}.pooler.dense.bias",
    "cls/predictions/transform/dense/kernel": "cls.predictions.transform.dense.weight",
    "cls/predictions/transform/dense/bias": "cls.predictions.transform.dense.bias",
    "cls/predictions/transform/LayerNorm/gamma": "cls.predictions.transform.LayerNorm.weight",
    "cls/predictions/transform/LayerNorm/beta": "cls.predictions.transform.LayerNorm.bias",
    "cls/predictions/output_bias": "cls.predictions.bias",
}
# Under `bert/encoder/layer_{i}/` -> under `{prefix}.encoder.layer.{i}.`.
HF_LAYER_NAMES = {
    "attention/self/query/kernel": "attention.self.query.weight",
    "attention/self/query/bias": "attention.self.query.bias",
    "attention/self/key/kernel": "attention.self.key.weight",
    "attention/self/key/bias": "attention.self.key.bias",
    "attention/self/value/kernel": "attention.self.value.weight",
    "attention/self/value/bias": "attention.self.value.bias",
    "attention/output/dense/kernel": "attention.output.dense.weight",
    "attention/output/dense/bias": "attention.output.dense.bias",
    "attention/output/LayerNorm/gamma": "attention.output.LayerNorm.weight",
    "attention/output/LayerNorm/beta": "attention.output.LayerNorm.bias",
    "intermediate/dense/kernel": "intermediate.dense.weight",
    "intermediate/dense/bias": "intermediate.dense.bias",
    "output/dense/kernel": "output.dense.weight",
    "output/dense/bias": "output.dense.bias",
    "output/LayerNorm/gamma": "output.LayerNorm.weight",
    "output/LayerNorm/beta": "output.LayerNorm.bias",
}
# The reading direction, derived (names without their `{prefix}.`).
GOOGLE_NAMES = {hf.removeprefix("{prefix}."): google for google, hf in HF_NAMES.items()}
GOOGLE_LAYER_NAMES = {hf: google for google, hf in HF_LAYER_NAMES.items()}
# Older transformers names, read as today's.
HF_ALIASES = [(r"LayerNorm\.gamma$", "LayerNorm.weight"), (r"LayerNorm\.beta$", "LayerNorm.bias"),
              (r"^cls\.predictions\.decoder\.bias$", "cls.predictions.bias")]
# HF tensors with no Google counterpart: buffers and the tied decoder matrix.
HF_IGNORED = re.compile(r"(position_ids|embed_positions\.weight|cls\.predictions\.decoder\.weight"
                        r"|cls\.seq_relationship\..*)$")


def _resolve(obj, path: str):
    for attribute in path.split("."):
        obj = getattr(obj, attribute, None)
        if obj is None:
            return None
    return obj


def variable_map(model: Transformer) -> tuple[dict, dict]:
    """`(backbone, heads)`: Google name -> Keras variable, for the variables `model` has."""
    backbone = {name: _resolve(model, path) for name, path in EMBEDDING_VARIABLES.items()}
    for i, block in enumerate(model.blocks):
        for suffix, path in LAYER_VARIABLES.items():
            backbone[f"bert/encoder/layer_{i}/{suffix}"] = _resolve(block, path)
    heads = {name: _resolve(model, path) for name, path in HEAD_VARIABLES.items()}
    return ({k: v for k, v in backbone.items() if v is not None},
            {k: v for k, v in heads.items() if v is not None})


def assign_weights(model: Transformer, values: dict[str, np.ndarray], source: str,
                   keep_tokens: Sequence[int] | None = None) -> None:
    """Assign Google-named arrays to `model`.

    A missing backbone variable or any shape mismatch raises; absent heads are left at
    their initial values and listed in one warning.
    """
    backbone, heads = variable_map(model)
    missing_heads = []
    for name, variable in {**backbone, **heads}.items():
        if name not in values:
            if name in heads:
                missing_heads.append(name)
                continue
            raise ValueError(f"{source}: variable {name} is missing (the model needs shape {tuple(variable.shape)})")
        value = np.asarray(values[name])
        if keep_tokens is not None and name in VOCAB_VARIABLES:
            if max(keep_tokens) >= value.shape[0]:
                raise ValueError(f"{source}: keep_tokens holds id {max(keep_tokens)} but {name} has "
                                 f"{value.shape[0]} rows")
            value = value[np.asarray(keep_tokens)]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"{source}: variable {name} has shape {tuple(value.shape)} in the checkpoint "
                             f"but {tuple(variable.shape)} in the model")
        variable.assign(value.astype(variable.dtype))
    if missing_heads:
        logger.warning("%s lacks %s; these stay at their initial values", source, ", ".join(missing_heads))


# ----------------------------------------------------------------- TF checkpoints
def resolve_checkpoint(path: str | os.PathLike) -> str:
    """The TF checkpoint prefix for a prefix or a directory holding one."""
    path = str(path)
    if os.path.isfile(path + ".index"):
        return path
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, CHECKPOINT_NAME + ".index")):
            return os.path.join(path, CHECKPOINT_NAME)
        indexes = sorted(f for f in os.listdir(path) if f.endswith(".index"))
        if indexes:
            return os.path.join(path, indexes[-1][: -len(".index")])
    raise FileNotFoundError(f"no TF checkpoint at {path} (expected {path}.index or a directory holding "
                            f"{CHECKPOINT_NAME}.index)")


def read_tf_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    import tensorflow as tf

    prefix = resolve_checkpoint(path)
    try:
        reader = tf.train.load_checkpoint(prefix)
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    except Exception as error:  # TensorFlow's errors for torn .index / .data-* files
        raise unreadable(prefix + ".{index,data-*}", "a TensorFlow checkpoint", error) from error


def read_variable_names(path: str | os.PathLike) -> set[str] | None:
    """The variable names of a directory's `bert_model.safetensors` or of a TF checkpoint
    (prefix or directory), or None if there is neither."""
    if holds_google_safetensors(path):
        from safetensors import safe_open

        file = os.path.join(path, SAFETENSORS_NAME)
        try:
            with safe_open(file, "numpy") as reader:
                return set(reader.keys())
        except Exception as error:  # safetensors' SafetensorError, OSError
            raise unreadable(file, "a safetensors file", error) from error
    try:
        prefix = resolve_checkpoint(path)
    except FileNotFoundError:
        return None
    import tensorflow as tf

    try:
        return set(tf.train.load_checkpoint(prefix).get_variable_to_shape_map())
    except Exception as error:
        raise unreadable(prefix + ".index", "a TensorFlow checkpoint index", error) from error


def write_tf_checkpoint(values: dict[str, np.ndarray], prefix: str | os.PathLike) -> None:
    """Write name-based TF checkpoint files `prefix.index` / `prefix.data-*`, on the CPU.

    Under the JAX backend on a GPU, TensorFlow reserves GPU memory when it starts unless
    told not to: that is the caller's choice (`simbert` commands hide the GPUs from
    TensorFlow, see `simbert.cli`), not this function's."""
    import tensorflow as tf

    names = sorted(values)
    with tf.device("/CPU:0"):
        tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                          tensors=[tf.constant(values[n]) for n in names])


def keep_tensorflow_off_the_gpus() -> None:
    """Under another Keras backend (JAX), hide the GPUs from TensorFlow for this process:
    TensorFlow is then only used to write bert4keras checkpoints, and would otherwise
    reserve the memory of the GPUs the backend computes on when it starts. A process-wide
    setting: the `simbert` commands and `Trainer.fit` make it; from Python, call it
    before `SimBERT.save` or `export_model(..., "bert4keras")` on a GPU machine.

    Example:
        >>> keep_tensorflow_off_the_gpus()
        >>> model.save("my_model")      # bert_model.ckpt.* written on the CPU
    """
    from simbert.kernels import Platform

    if Platform.current().tensorflow_is_a_guest and tensorflow_importable():
        import tensorflow as tf

        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TensorFlow's devices were already set up in this process
            pass


def tensorflow_importable() -> bool:
    """Whether the TF checkpoint (bert4keras' format) can be written here."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------ safetensors
def holds_google_safetensors(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(path, SAFETENSORS_NAME))


def write_google_safetensors(values: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Google-named arrays to one safetensors file (no TensorFlow needed), written atomically."""
    from safetensors.numpy import save_file

    arrays = {name: np.ascontiguousarray(value) for name, value in values.items()}
    replace_atomically(path, lambda temporary: save_file(arrays, temporary))


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file; a torn or foreign file raises `FileFormatError`."""
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors' SafetensorError, OSError
        raise unreadable(path, "a safetensors file", error) from error


def model_values(model: Transformer) -> dict[str, np.ndarray]:
    backbone, heads = variable_map(model)
    return {name: np.asarray(variable.numpy(), dtype="float32") for name, variable in {**backbone, **heads}.items()}


# ------------------------------------------------------------------ Hugging Face
def hf_to_google(name: str) -> tuple[str, bool] | None:
    """The Google name of a transformers tensor (through `HF_NAMES` / `HF_LAYER_NAMES`).

    Args:
        name: a BERT or RoFormer state-dict key, with or without its `bert.`/`roformer.`
            prefix; older names (`LayerNorm.gamma`, `cls.predictions.decoder.bias`) too.

    Returns:
        `(google_name, transposed)`, `transposed` True for a dense kernel (torch stores it
        (out, in)); None for a tensor without a Google counterpart (`HF_IGNORED`).
    """
    short = re.sub(r"^(bert|roformer)\.", "", name)
    if HF_IGNORED.search(short):
        return None
    for pattern, replacement in HF_ALIASES:
        short = re.sub(pattern, replacement, short)
    block = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", short)
    if block and block[2] in GOOGLE_LAYER_NAMES:
        google_name = f"bert/encoder/layer_{block[1]}/{GOOGLE_LAYER_NAMES[block[2]]}"
    elif short in GOOGLE_NAMES:
        google_name = GOOGLE_NAMES[short]
    else:
        raise ValueError(f"HF tensor {name!r} has no known BERT/RoFormer counterpart")
    return google_name, google_name.endswith("/kernel")


def google_to_hf(name: str, model_type: str) -> tuple[str, bool]:
    """transformers' name of a Google-named tensor (through `HF_NAMES` / `HF_LAYER_NAMES`).

    Args:
        name: a Google checkpoint name, e.g. `bert/encoder/layer_0/attention/self/query/kernel`.
        model_type: "bert" or "roformer", the prefix of the backbone's names.

    Returns:
        `(hf_name, transposed)`, `transposed` True for a dense kernel, which torch stores
        (out, in).
    """
    block = re.fullmatch(r"bert/encoder/layer_(\d+)/(.+)", name)
    if block and block[2] in HF_LAYER_NAMES:
        hf_name = f"{model_type}.encoder.layer.{block[1]}.{HF_LAYER_NAMES[block[2]]}"
    elif name in HF_NAMES:
        hf_name = HF_NAMES[name].format(prefix=model_type)
    else:
        raise ValueError(f"tensor {name!r} has no transformers counterpart")
    return hf_name, name.endswith("/kernel")


def read_hf_directory(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Google-named arrays from `model.safetensors` (or `pytorch_model.bin`, loaded with
    `torch.load(weights_only=True)`, never unpickling arbitrary objects)."""
    safetensors_path = os.path.join(path, HF_WEIGHT_FILES[0])
    if os.path.isfile(safetensors_path):
        tensors = read_safetensors(safetensors_path)
    else:
        import torch

        file = os.path.join(path, HF_WEIGHT_FILES[1])
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # torch's UnpicklingError (refused objects), RuntimeError (torn zip)
            raise unreadable(file, "a PyTorch state dict of tensors", error) from error
        tensors = {k: v.float().numpy() for k, v in state.items()}
    values = {}
    for name, tensor in tensors.items():
        translated = hf_to_google(name)
        if translated is not None:
            google_name, transpose = translated
            values[google_name] = tensor.T if transpose else tensor
    return values


# --------------------------------------------------------------------- dispatch
def holds_hf_weights(path: str | os.PathLike) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, name)) for name in HF_WEIGHT_FILES)


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Google-named arrays from an HF directory, a directory holding
    `bert_model.safetensors` (preferred: no TensorFlow needed), or a TF checkpoint
    (prefix or directory)."""
    if holds_hf_weights(path):
        return read_hf_directory(path)
    if holds_google_safetensors(path):
        return read_safetensors(os.path.join(path, SAFETENSORS_NAME))
    return read_tf_checkpoint(path)


def load_weights(model: Transformer, path: str | os.PathLike,
                 keep_tokens: Sequence[int] | None = None) -> None:
    assign_weights(model, read_weights(path), str(path), keep_tokens)


# --------------------------------------------------------------- training state
def write_training_state(path: str | os.PathLike, variables) -> None:
    """Save `variables` (e.g. optimizer slots, dropout generator states) to an npz file
    keyed by variable path."""
    values = {}
    for variable in variables:
        if variable.path in values:
            raise ValueError(f"two training-state variables share the path {variable.path}")
        values[variable.path] = np.asarray(variable.numpy())
    np.savez(path, **values)


def read_training_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a training-state file, read in full (so a torn file fails here,
    before anything is assigned), keyed by variable path."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {name: saved[name] for name in saved.files}
    except OSError as error:
        if not os.path.isfile(path):
            raise missing_path("training state", path) from None
        raise unreadable(path, "a training-state .npz", error) from error
    except Exception as error:  # zipfile's BadZipFile, EOFError, ValueError on a torn array
        raise unreadable(path, "a training-state .npz", error) from error


def assign_training_state(values: dict[str, np.ndarray], variables, source: str) -> None:
    """Assign each of `variables` the value saved under its path; a variable missing from
    `values`, or saved with another shape, raises naming it (the model or optimizer
    changed since the file was written)."""
    for variable in variables:
        if variable.path not in values:
            raise ValueError(f"{source} holds no value for {variable.path} (the model or optimizer changed "
                             f"since it was saved?)")
        value = values[variable.path]
        if tuple(variable.shape) != value.shape:
            raise ValueError(f"{source}: {variable.path} has shape {value.shape} in the file but "
                             f"{tuple(variable.shape)} here")
        variable.assign(value)
