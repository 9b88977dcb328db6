"""What several benchmarks share: the repository root and the data directory, reading
sentences, random models written to disk, timing, fresh child processes, and the line or
record that describes the machine.

Imports here stay light (the standard library and NumPy): simbert, Keras, JAX and torch
are imported inside the functions that need them, so that every benchmark can import
this module on a machine that lacks some of them (the GPU machine has no TensorFlow).
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")  # afqmc/train.txt, vocab/chinese_bert_vocab.txt
QUERY = "蚂蚁花呗怎么提前还款"  # an AFQMC question: the text gen_synonyms starts from
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CJK_CONFIG = {"vocab_size": 13685, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
              "intermediate_size": 1536, "max_position_embeddings": 512, "hidden_act": "gelu"}


# ------------------------------------------------------------------------- data
def afqmc_path(data: str) -> str:
    """The AFQMC pair file of a data directory laid out as ../shared/data."""
    return os.path.join(data, "afqmc", "train.txt")


def read_sentences(path: str, count: int, columns: int = 2, unique: bool = True) -> list[str]:
    """Up to `count` non-empty texts of a tab-separated pair file, taken from the first
    `columns` columns of each line in order (stripped; a leading BOM ignored); with
    `unique`, each text once."""
    seen, sentences = set(), []
    with open(path, encoding="utf-8-sig") as reader:
        for line in reader:
            for text in line.split("\t")[:columns]:
                text = text.strip()
                if text and not (unique and text in seen):
                    seen.add(text)
                    sentences.append(text)
                    if len(sentences) == count:
                        return sentences
    return sentences


def pair_rows(batch: int, source: int, target: int, vocab_size: int, seed: int = 0):
    """Token and segment ids of `batch` rows `[CLS] a [SEP] b [SEP]`, `source` + `target`
    tokens, random ids (none of the first five, the special tokens)."""
    rng = np.random.default_rng(seed)
    length = source + target
    token_ids = rng.integers(5, vocab_size, (batch, length)).astype("int32")
    token_ids[:, 0], token_ids[:, source - 1], token_ids[:, -1] = 2, 3, 3
    segment_ids = np.zeros((batch, length), "int32")
    segment_ids[:, source:] = 1
    return token_ids, segment_ids


# ----------------------------------------------------------------------- models
def simplified_vocab(data: str) -> dict[str, int]:
    """The simplified Chinese BERT vocabulary of a data directory (as ../shared/data)."""
    from simbert import tokenizer

    token_dict, _ = tokenizer.load_vocab(os.path.join(data, "vocab", "chinese_bert_vocab.txt"), simplified=True,
                                         startswith=list(tokenizer.SPECIAL_TOKENS))
    return token_dict


def write_hf_directory(directory: str, model: dict, token_dict: dict[str, int]) -> str:
    """A random BERT (backbone, pooler, MLM head) as transformers writes it, with the
    MLM bias of [PAD] and [SEP] at -30 so that no sample ends early on either side.
    Kept if the directory already holds one."""
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    if os.path.isfile(os.path.join(directory, "model.safetensors")):
        return directory
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(token_dict), max_position_embeddings=512, **model)
    transformers.BertForPreTraining(config).save_pretrained(directory, safe_serialization=True)
    path = os.path.join(directory, "model.safetensors")
    tensors = load_file(path)
    for name in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
        if name in tensors:
            tensors[name][[0, token_dict["[SEP]"]]] = -30.0
    save_file(tensors, path, metadata={"format": "pt"})
    ordered = sorted(token_dict, key=token_dict.get)
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as writer:
        writer.write("\n".join(ordered) + "\n")
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as writer:
        json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}, writer)
    return directory


def cjk_characters(vocab_size: int) -> list[str]:
    """The tokens after the special ones in `cjk_vocabulary(vocab_size)`: CJK characters."""
    return [chr(0x4E00 + i) for i in range(vocab_size - len(SPECIAL_TOKENS))]


def cjk_vocabulary(vocab_size: int) -> dict[str, int]:
    """The special tokens ([SEP] is 3), then CJK characters: `vocab_size` tokens."""
    return {token: i for i, token in enumerate([*SPECIAL_TOKENS, *cjk_characters(vocab_size)])}


def write_random_model(directory: str, config: dict, never_end: bool = False):
    """A random UniLM model (linear pooler and MLM head) with the vocabulary of
    `cjk_vocabulary`, saved to `directory` (simbert's layout and a TF checkpoint);
    returns it. With `never_end`, the MLM bias of [PAD] and [SEP] is -30, so that every
    sample runs all its steps."""
    from simbert import build_transformer_model
    from simbert.directories import save_pretrained

    model = build_transformer_model(config, application="unilm", with_mlm="linear", with_pool="linear")
    if never_end:
        bias = model.mlm_bias.bias.numpy()
        bias[[0, SPECIAL_TOKENS.index("[SEP]")]] = -30.0
        model.mlm_bias.bias.assign(bias)
    save_pretrained(model, directory, cjk_vocabulary(config["vocab_size"]))
    return model


def random_texts(characters: list[str], count: int, seed: int) -> list[str]:
    """`count` texts of 4-30 characters drawn from the first 3000 of `characters`."""
    rng = random.Random(seed)
    return ["".join(rng.choices(characters[:3000], k=rng.randint(4, 30))) for _ in range(count)]


# ----------------------------------------------------------------------- timing
def timings(function, repeats: int, warmup: int = 0) -> tuple[list[float], object]:
    """`function()` called `warmup` times untimed, then `repeats` times: the seconds of
    each timed call and the last call's result."""
    result = None
    for _ in range(warmup):
        result = function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return times, result


def median_seconds(function, repeats: int, warmup: int = 3) -> float:
    """The median seconds of `repeats` calls of `function()`, after `warmup` untimed ones."""
    return float(np.median(timings(function, repeats, warmup)[0]))


def run_child(module: str, *arguments) -> dict:
    """A measurement that needs a fresh process: `python -m module --child arguments...`
    from the repository root; its last stdout line as JSON, with `process_s` (the whole
    process, start-up included). The module answers `--child` by printing that line."""
    command = [sys.executable, "-m", module, "--child", *map(str, arguments)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["process_s"] = time.perf_counter() - started
    return report


def device_peak_bytes() -> int | None:
    """The accelerator's peak bytes in use (JAX on a GPU), else None."""
    import keras

    if keras.backend.backend() != "jax":
        return None
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


# ---------------------------------------------------------------------- machine
def machine_line(details: str = "") -> str:
    """The first line a benchmark prints: processor and cores, then `details`."""
    return f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores{details}"


def describe_machine() -> dict:
    """The device JAX runs on and the versions of everything measured (JAX, Keras,
    torch), for a results file."""
    import jax
    import keras
    import torch

    device = jax.devices()[0]
    return {"device": getattr(device, "device_kind", str(device)), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__, "keras": keras.__version__,
            "torch": torch.__version__, "backend": keras.backend.backend(), "cpus": os.cpu_count()}
