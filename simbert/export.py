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
- `sentence_transformers`: a directory `sentence_transformers.SentenceTransformer` loads
  as it is: the `hf` export's base model and tokenizer files, [CLS] pooling, the pooler
  (and a whitening) as Dense modules, Normalize; its vectors are `SimBERT.encode`'s.
  transformers' fast BertTokenizer splits text as simbert's `Tokenizer` does, except for
  private-use characters, the CJK Extension E ideographs U+2B820-U+2B91F, characters newer
  than Python's Unicode tables and words of 101-200 characters (one [UNK] there).

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

from simbert import __version__
from simbert.arguments import check_integer
from simbert.atomic_files import StagedDirectory, replace_atomically
from simbert.checkpoints import google_to_hf, model_values
from simbert.directories import (
    HF_CONFIG_FILE,
    VOCAB_FILE,
    WHITENING_FILE,
    load_pretrained,
    save_pretrained,
    with_latest_checkpoint,
)
from simbert.kernels import Platform
from simbert.models import Transformer
from simbert.retrieval import Whitening
from simbert.tokenizer import save_vocab

logger = logging.getLogger(__name__)

FORMATS = ("saved_model", "onnx", "hf", "bert4keras", "sentence_transformers")
POSITION_TABLE = "bert/embeddings/position_embeddings"
ENCODER_FORMATS = ("saved_model", "onnx")  # written on the TensorFlow backend
ONNX_FILE = "model.onnx"
HF_WEIGHTS_FILE = "model.safetensors"
HF_MAX_POSITIONS = 8192  # rows a hierarchical position table is written out to by default
ST_MAX_TOKENS = 64  # tokens a text keeps: SimBERT.from_pretrained's max_tokens, the CLI's --maxlen
# The pooler's activation -> the torch module sentence-transformers' Dense applies.
ST_ACTIVATIONS = {"linear": "torch.nn.modules.linear.Identity", "tanh": "torch.nn.modules.activation.Tanh"}
ST_OTHER_POOLING_MODES = ("mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")


def hf_tensors(model: Transformer) -> dict[str, np.ndarray]:
    """The model's tensors under transformers' names (`checkpoints.HF_NAMES`, the table
    loading reads too); dense kernels transposed to torch's (out, in)."""
    tensors = {}
    for name, value in model_values(model).items():
        hf_name, transposed = google_to_hf(name, model.config.model_type)
        tensors[hf_name] = np.ascontiguousarray(value.T if transposed else value)
    return tensors


def hf_files(model: Transformer, out: str, max_positions: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """config.json's mapping and the tensors (`hf_tensors`) of the `hf` export of `model`;
    a hierarchical position table written out to `max_positions` rows (see `export_hf`;
    `out` only names the export in the warning that says so)."""
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
    return config, tensors


def write_hf(out: str, config: dict, tensors: dict[str, np.ndarray], token_dict: dict[str, int]) -> None:
    """config.json, model.safetensors and vocab.txt in the directory `out`."""
    from safetensors.numpy import save_file

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, HF_CONFIG_FILE), "w", encoding="utf-8") as writer:
        json.dump(config, writer, indent=2)
    replace_atomically(os.path.join(out, HF_WEIGHTS_FILE),
                       lambda temporary: save_file(tensors, temporary, metadata={"format": "pt"}))
    save_vocab(os.path.join(out, VOCAB_FILE), token_dict)


def export_hf(model: Transformer, token_dict: dict[str, int], out: str, max_positions: int | None = None) -> None:
    write_hf(out, *hf_files(model, out, max_positions), token_dict)


def tokenizer_config(token_dict: dict[str, int], max_seq_length: int) -> dict:
    """tokenizer_config.json for transformers' `BertTokenizer` (fast, from vocab.txt) with
    the rules of simbert's `Tokenizer`: lower-cased, accents stripped, CJK characters
    split apart, `[CLS]` etc. in a text tokenized as text; padding with the token of id 0."""
    return {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "tokenize_chinese_chars": True,
            "strip_accents": None, "split_special_tokens": True, "model_max_length": max_seq_length,
            "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
            "pad_token": "[PAD]" if "[PAD]" in token_dict else min(token_dict, key=token_dict.get),
            "mask_token": "[MASK]" if "[MASK]" in token_dict else None}


def write_json(path: str, value) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as writer:
        json.dump(value, writer, indent=2, ensure_ascii=False)


def export_sentence_transformers(model: Transformer, token_dict: dict[str, int], out: str,
                                 max_tokens: int = ST_MAX_TOKENS, max_positions: int | None = None,
                                 whitening: Whitening | None = None) -> None:
    """A directory `sentence_transformers.SentenceTransformer(out)` loads, encoding what
    `SimBERT.encode` does: modules.json lists (0) a Transformer, the `hf` export's base
    model (`BertModel` / `RoFormerModel`: no MLM head) with vocab.txt and
    tokenizer_config.json (`tokenizer_config`); (1) Pooling of [CLS]; (2) Dense, the
    pooler (no activation for SimBERT's linear one); with a `whitening`, (3) a Dense of its
    transform, the mean taken off in (2)'s bias; then Normalize. Written whole or not at
    all.

    Args:
        model: the backbone, with its pooler.
        token_dict: its vocabulary.
        out: the directory to write (replaced whole).
        max_tokens: tokens a text keeps (max_seq_length), as `SimBERT`'s `max_tokens`; at
            most the positions the exported model has (a warning says when fewer).
        max_positions: rows a hierarchical position table is written out to (`hf_files`).
        whitening: the model directory's whitening, applied after the pooler.
    """
    from safetensors.numpy import save_file

    check_integer("max_tokens", max_tokens, 3)
    activation = "tanh" if model.with_pool is True else model.with_pool
    if model.pooler is None or activation not in ST_ACTIVATIONS:
        raise ValueError(f"sentence_transformers export: the model's pooler is {model.with_pool!r}; supported: "
                         f"a pooler with activation {' or '.join(ST_ACTIVATIONS)} (SimBERT's is linear)")
    kind = model.config.model_type
    config, tensors = hf_files(model, out, max_positions)
    pooler = [google_to_hf(f"bert/pooler/dense/{name}", kind)[0] for name in ("kernel", "bias")]
    weight, bias = tensors[pooler[0]], tensors[pooler[1]].astype("float64")
    dense_layers = [(activation, weight, bias)]
    if whitening is not None:  # encode's (v - mean) @ transform: the mean taken off before the product
        transform, mean = np.asarray(whitening.transform, "float64"), np.asarray(whitening.mean, "float64").ravel()
        if activation == "linear":
            dense_layers = [(activation, weight, bias - mean), ("linear", transform.T, None)]
        else:
            dense_layers.append(("linear", transform.T, -(mean @ transform)))
    # transformers' base model: no MLM head, and RoFormerModel has no pooler.
    encoder = {name: value for name, value in tensors.items()
               if not name.startswith("cls.") and (kind == "bert" or name not in pooler)}
    config["architectures"] = ["BertModel" if kind == "bert" else "RoFormerModel"]
    if kind == "roformer":  # its sinusoid table is computed from this, not read: as far as encode reads
        config["max_position_embeddings"] = max(config["max_position_embeddings"], max_tokens)
    max_seq_length = min(max_tokens, config["max_position_embeddings"])
    if max_seq_length < min(max_tokens, model.config.max_length or max_tokens):
        logger.warning("sentence_transformers export: %s reads %d tokens a text (the rows of its position "
                       "table, max_positions), SimBERT.encode %d", out, max_seq_length, max_tokens)
    modules = [("", "Transformer"), ("1_Pooling", "Pooling")]
    modules += [(f"{index}_Dense", "Dense") for index in range(2, 2 + len(dense_layers))]
    modules.append((f"{len(modules)}_Normalize", "Normalize"))
    with StagedDirectory(out) as staging:
        root = staging.temporary
        write_hf(root, config, encoder, token_dict)
        write_json(os.path.join(root, "tokenizer_config.json"), tokenizer_config(token_dict, max_seq_length))
        write_json(os.path.join(root, "sentence_bert_config.json"),
                   {"max_seq_length": max_seq_length, "do_lower_case": False})
        write_json(os.path.join(root, "config_sentence_transformers.json"),
                   {"__version__": {"simbert": __version__}, "model_type": "SentenceTransformer", "prompts": {},
                    "default_prompt_name": None, "similarity_fn_name": "cosine"})
        write_json(os.path.join(root, "modules.json"),
                   [{"idx": index, "name": str(index), "path": path, "type": f"sentence_transformers.models.{name}"}
                    for index, (path, name) in enumerate(modules)])
        write_json(os.path.join(root, "1_Pooling", "config.json"),
                   {"word_embedding_dimension": model.config.hidden_size, "pooling_mode_cls_token": True,
                    **{f"pooling_mode_{mode}": False for mode in ST_OTHER_POOLING_MODES}, "include_prompt": True})
        width = model.config.hidden_size
        for (path, _), (function, weight, bias) in zip(modules[2:], dense_layers):
            write_json(os.path.join(root, path, "config.json"),
                       {"in_features": width, "out_features": len(weight), "bias": bias is not None,
                        "activation_function": ST_ACTIVATIONS[function]})
            weights = {"linear.weight": np.ascontiguousarray(weight, "float32")}
            if bias is not None:
                weights["linear.bias"] = np.asarray(bias, "float32")
            replace_atomically(os.path.join(root, path, HF_WEIGHTS_FILE),  # the mode a new file gets
                               lambda temporary, weights=weights: save_file(weights, temporary,
                                                                            metadata={"format": "pt"}))
            width = len(weight)
        write_json(os.path.join(root, modules[-1][0], "config.json"), {})


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
                 max_positions: int | None = None, max_tokens: int | None = None) -> str:
    """Export the model directory (or a training run's newest checkpoint) to `out` in
    `format` (one of `FORMATS`).

    Args:
        model_dir: a model directory, or a training output (its newest checkpoint).
        out: a new (or empty) directory to write.
        format: "saved_model" or "onnx" (the encoder, token and segment ids to the pooled
            vector; TensorFlow backend only), "hf" (transformers' BERT / RoFormer
            directory), "bert4keras" (the released layout) or "sentence_transformers" (a
            `SentenceTransformer` directory giving `SimBERT.encode`'s vectors, its
            whitening.npz included; `export_sentence_transformers`).
        max_positions: "hf" / "sentence_transformers" of a model with hierarchical
            positions: the rows its position table is written out to (default: its
            limit, at most `HF_MAX_POSITIONS`).
        max_tokens: "sentence_transformers": tokens a text keeps (default `ST_MAX_TOKENS`,
            as `SimBERT.from_pretrained`).

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
    if max_tokens is not None and format != "sentence_transformers":
        raise ValueError(f"export: --maxlen is for --format sentence_transformers, not {format}")
    out = str(out)
    if os.path.exists(out) and os.listdir(out):
        raise FileExistsError(f"export: {out} exists and is not empty; choose a new directory")
    if format == "sentence_transformers":
        def read(directory: str) -> tuple:
            whitening = os.path.join(directory, WHITENING_FILE)  # applied by SimBERT.from_pretrained
            return (*load_pretrained(directory), Whitening.load(whitening) if os.path.isfile(whitening) else None)

        tokenizer, backbone, whitening = with_latest_checkpoint(model_dir, read)
        export_sentence_transformers(backbone, tokenizer.token_dict, out, max_tokens or ST_MAX_TOKENS,
                                     max_positions, whitening)
        return out
    tokenizer, backbone = load_pretrained(model_dir)
    if format == "hf":
        export_hf(backbone, tokenizer.token_dict, out, max_positions)
        return out
    if format == "bert4keras":
        save_pretrained(backbone, out, tokenizer.token_dict)
        return out
    return export_encoder(backbone, tokenizer.token_dict, out, format)
