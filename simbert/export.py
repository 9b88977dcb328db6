"""`simbert export`: a model directory in the formats other tools load.

- `saved_model`: the encoder `(token_ids, segment_ids) -> pooled [CLS]` (int32, any batch
  and length; the vector before l2-normalisation) as a TensorFlow SavedModel (TF Serving
  serves it), with vocab.txt beside it.
- `onnx`: the same encoder as `model.onnx` (onnxruntime), with vocab.txt.
- `hf`: config.json + model.safetensors under transformers' BERT / RoFormer names
  (backbone, pooler, MLM head) + vocab.txt: `BertModel` / `BertForMaskedLM` (or the
  RoFormer classes) load it, and so does `SimBERT.from_pretrained`. transformers has no
  hierarchical positions: such a model's position vectors are written out as a plain
  table of `max_positions` rows (default: its n^2 limit, at most `HF_MAX_POSITIONS`).
- `bert4keras`: the released layout (bert_config.json, vocab.txt, bert_model.ckpt.*).

The first two trace the Keras encoder through TensorFlow (`keras.Model.export`; ONNX then
through tf2onnx), on the TensorFlow backend only: on JAX, Keras would write StableHLO
(jax2tf) that an older TensorFlow cannot load, or need jax2onnx, so they are refused
with the command to run instead.
"""

from __future__ import annotations

import json
import logging
import os

import keras
import numpy as np

from simbert.arguments import check_integer
from simbert.atomic_files import replace_atomically
from simbert.checkpoints import google_to_hf, model_values
from simbert.directories import HF_CONFIG_FILE, VOCAB_FILE, load_pretrained, save_pretrained
from simbert.kernels import Platform
from simbert.models import Transformer
from simbert.tokenizer import save_vocab

logger = logging.getLogger(__name__)

FORMATS = ("saved_model", "onnx", "hf", "bert4keras")
POSITION_TABLE = "bert/embeddings/position_embeddings"
ENCODER_FORMATS = ("saved_model", "onnx")  # written on the TensorFlow backend
ONNX_FILE = "model.onnx"
HF_WEIGHTS_FILE = "model.safetensors"
HF_MAX_POSITIONS = 8192  # rows a hierarchical position table is written out to by default


def hf_tensors(model: Transformer) -> dict[str, np.ndarray]:
    """The model's tensors under transformers' names (`checkpoints.HF_NAMES`, the table
    loading reads too); dense kernels transposed to torch's (out, in)."""
    tensors = {}
    for name, value in model_values(model).items():
        hf_name, transposed = google_to_hf(name, model.config.model_type)
        tensors[hf_name] = np.ascontiguousarray(value.T if transposed else value)
    return tensors


def export_hf(model: Transformer, token_dict: dict[str, int], out: str, max_positions: int | None = None) -> None:
    from safetensors.numpy import save_file

    os.makedirs(out, exist_ok=True)
    kind = model.config.model_type
    config = {**model.config.to_hf_config(), "model_type": kind,
              "architectures": ["BertForMaskedLM" if kind == "bert" else "RoFormerForMaskedLM"]}
    tensors = hf_tensors(model)
    if model.config.hierarchical_position is not None:
        rows = max_positions or min(model.config.max_length, HF_MAX_POSITIONS)
        check_integer("max_positions", rows, 1, model.config.max_length)
        table = model.position_embedding.vectors(keras.ops.arange(rows))
        tensors[google_to_hf(POSITION_TABLE, kind)[0]] = np.asarray(keras.ops.convert_to_numpy(table), "float32")
        config.pop("hierarchical_position")
        config["max_position_embeddings"] = rows
        logger.warning("hf export: transformers has no hierarchical positions; the %d positions of %s are "
                       "written out as a table of %d rows (max_positions), its token limit there",
                       model.config.max_length, out, rows)
    with open(os.path.join(out, HF_CONFIG_FILE), "w", encoding="utf-8") as writer:
        json.dump(config, writer, indent=2)
    replace_atomically(os.path.join(out, HF_WEIGHTS_FILE),
                       lambda temporary: save_file(tensors, temporary, metadata={"format": "pt"}))
    save_vocab(os.path.join(out, VOCAB_FILE), token_dict)


def export_encoder(model: Transformer, token_dict: dict[str, int], out: str, format: str) -> str:
    """The pooled encoder as a SavedModel directory or `out/model.onnx`; returns its path."""
    encoder = model.pooled_encoder()
    dummy = np.array([[1, 1]], "int32")
    encoder([dummy, np.zeros_like(dummy)])  # Keras exports only a model that has run
    if format == "saved_model":
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked by export_model); Keras writes the directory itself
        target = out
        encoder.export(target, format="tf_saved_model", verbose=False)
    else:
        os.makedirs(out, exist_ok=True)
        target = os.path.join(out, ONNX_FILE)
        encoder.export(target, format="onnx", verbose=False)
    save_vocab(os.path.join(out, VOCAB_FILE), token_dict)
    return target


def export_model(model_dir: str | os.PathLike, out: str | os.PathLike, format: str,
                 max_positions: int | None = None) -> str:
    """Export the model directory (or a training run's newest checkpoint) to `out` in
    `format` (one of `FORMATS`).

    Args:
        model_dir: a model directory, or a training output (its newest checkpoint).
        out: a new (or empty) directory to write.
        format: "saved_model" or "onnx" (the encoder, token and segment ids to the pooled
            vector; TensorFlow backend only), "hf" (transformers' BERT / RoFormer
            directory) or "bert4keras" (the released layout).
        max_positions: "hf" of a model with hierarchical positions: the rows its position
            table is written out to (default: its limit, at most `HF_MAX_POSITIONS`).

    Returns:
        The path written: `out`, or for "onnx" the `model.onnx` file in it.

    Example:
        >>> export_model("runs/tiny", "out/hf", "hf")
        'out/hf'
    """
    if format not in FORMATS:
        raise ValueError(f"export: --format should be one of {FORMATS}, got {format!r}")
    platform = Platform.current()
    if format in ENCODER_FORMATS and not platform.exports_graphs:
        raise ValueError(f"export: --format {format} runs on the TensorFlow backend (KERAS_BACKEND=tensorflow "
                         f"simbert export ...; the model directory is the same on every backend); on "
                         f"{platform.backend} Keras would write StableHLO that the installed TensorFlow "
                         "may not read, or need jax2onnx")
    out = str(out)
    if os.path.exists(out) and os.listdir(out):
        raise FileExistsError(f"export: {out} exists and is not empty; choose a new directory")
    tokenizer, backbone = load_pretrained(model_dir)
    if format == "hf":
        export_hf(backbone, tokenizer.token_dict, out, max_positions)
        return out
    if format == "bert4keras":
        save_pretrained(backbone, out, tokenizer.token_dict)
        return out
    return export_encoder(backbone, tokenizer.token_dict, out, format)
