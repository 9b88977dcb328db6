"""`benchmarks.gpu --sections long_texts`: `SimBERT.encode` of one text of 1,024 / 2,048 /
4,096 tokens on benchmarks/long_texts.py's model (BERT-base width, 4 layers, 512 learned
positions stretched by `hierarchical_position`), through the written softmax attention
and through `keras.ops.dot_product_attention` (`Kernels.fused_attention`), in float32
and in mixed_bfloat16: which path inference should take on the GPU (`GPU_KERNELS`).

On a GPU, Keras' `dot_product_attention` takes cuDNN's flash attention where JAX's
checks accept the inputs (fp16 / bf16 only: so mixed_bfloat16), else XLA's own
attention, which holds the scores as the written path does; each fused row says which
one the compiled program of that length and dtype holds (`cudnn_attention`: a probe's
compiled HLO has cuDNN's fused-attention call).

One fresh process per precision and path (children of the driver), the lengths in
ascending order in it: for each, the first call (tracing and compiling included), the
median of `REPEATS` more (ms a call), and the memory: on a GPU the device's peak bytes in
use (it never falls, and the memory grows with the length, so each length's peak is its
own) less the bytes held just before the length's first call (the weights), on a CPU the
resident set's growth during the first call (`long_texts.ResidentPeak`). The driver
compares the two paths' vectors (unit length) at each length: equal within
`gpu_targets.LONG_TEXT_TOLERANCE` of the compute dtype. The end-of-run table says which
path to keep: the fused one where its vectors are equal and it is no slower at every
length (memory shown beside).

`--small`: long_texts' small model (L2/H256/A4) at 256 / 512 / 1,024 tokens, 2 repeats.
"""

from __future__ import annotations

import os
import time

import numpy as np

from benchmarks.common import device_peak_bytes, median_seconds, run_child, write_random_model
from benchmarks.gpu_common import DRIVER, record
from benchmarks.gpu_targets import LONG_TEXT_TOLERANCE
from benchmarks.long_texts import CONFIGS, ResidentPeak, long_text, use_fused_attention

LENGTHS = (1024, 2048, 4096)
SMALL_LENGTHS = (256, 512, 1024)
REPEATS = 5
PATHS = {False: "written softmax", True: "dot_product_attention"}


def device_bytes_in_use() -> int | None:
    """The accelerator's bytes in use now (JAX on a GPU), else None."""
    import keras

    if keras.backend.backend() != "jax":
        return None
    import jax

    return (jax.devices()[0].memory_stats() or {}).get("bytes_in_use")


def cudnn_attention(length: int, heads: int, head_size: int, dtype: str) -> bool | None:
    """Whether `keras.ops.dot_product_attention` compiles to cuDNN's fused attention for
    one text of `length` tokens as `MultiHeadAttention` calls it (batch 1, a boolean mask
    (1, 1, L, L)); None off JAX or where the probe itself fails. Compiled only, from
    shapes: nothing is allocated."""
    import keras

    if keras.backend.backend() != "jax":
        return None
    import jax

    def attend(q, k, v, mask):
        return keras.ops.dot_product_attention(q, k, v, mask=mask, scale=1 / head_size ** 0.5)

    qkv = jax.ShapeDtypeStruct((1, length, heads, head_size), dtype)
    mask = jax.ShapeDtypeStruct((1, 1, length, length), "bool")
    try:
        text = jax.jit(attend).lower(qkv, qkv, qkv, mask).compile().as_text()
    except Exception:  # noqa: BLE001 (the measurement stands without the probe)
        return None
    return "fmha" in text.lower()  # cuDNN's custom call, __cudnn$fmha...


def vectors_path(work: str, precision: str, fused: bool, length: int) -> str:
    return os.path.join(work, f"long_texts_{precision}_{int(fused)}_{length}.npy")


def child_long_texts(directory, size, lengths, precision, fused, repeats, work):
    """One process: the model in `precision` with the attention path asked for; each
    length's first call, steady ms and memory (module docstring)."""
    import keras

    from simbert.api import SimBERT

    start = time.perf_counter()
    model = SimBERT.from_pretrained(directory, max_tokens=max(lengths), hierarchical_position=True,
                                    precision=precision)
    use_fused_attention(model, fused)
    loaded = time.perf_counter()
    config = CONFIGS[size]
    heads = config["num_attention_heads"]
    rows = []
    for length in lengths:
        text = long_text(size, length)
        held = device_bytes_in_use()
        began = time.perf_counter()
        with ResidentPeak() as peak:
            vectors = model.encode([text])
        first = time.perf_counter() - began
        steady = median_seconds(lambda text=text: model.encode([text]), repeats, warmup=0)
        device = device_peak_bytes()
        np.save(vectors_path(work, precision, fused, length), vectors)
        rows.append({"length": length, "first_s": first, "steady_ms": steady * 1e3,
                     "memory_mb": (device - held if device is not None else peak.grown_bytes) / 2 ** 20,
                     "memory": "device peak less held before" if device is not None else "RSS growth, first call",
                     **({"device_peak_mb": device / 2 ** 20, "held_before_mb": held / 2 ** 20}
                        if device is not None else {}),
                     "cudnn_attention": cudnn_attention(length, heads, config["hidden_size"] // heads,
                                                        model.backbone.dtype_policy.compute_dtype)
                     if fused else False})
    return {"load_s": loaded - start, "backend": keras.backend.backend(), "lengths": rows}


def section_long_texts(args, work, token_dict):
    size = "small" if args.small else "base"
    lengths = SMALL_LENGTHS if args.small else LENGTHS
    repeats = 2 if args.small else REPEATS
    directory = os.path.join(work, f"long_texts_model_{size}")
    if not os.path.isfile(os.path.join(directory, "bert_config.json")):
        write_random_model(directory, CONFIGS[size])
    for precision in LONG_TEXT_TOLERANCE:
        reports = {}
        for fused, path in PATHS.items():
            try:
                reports[fused] = run_child(DRIVER, "long-texts", directory, size, ",".join(map(str, lengths)),
                                           precision, int(fused), repeats, work)
            except RuntimeError as error:
                record(work, section="long_texts", name=f"{precision}, {path}",
                       error=f"{precision}, {path}: {error}"[-3000:])
        for fused, report in reports.items():
            for row in report["lengths"]:
                length = row["length"]
                compared = {}
                if fused and False in reports:
                    difference = np.abs(np.load(vectors_path(work, precision, True, length))
                                        - np.load(vectors_path(work, precision, False, length))).max()
                    compared = {"max_difference": float(difference), "tolerance": LONG_TEXT_TOLERANCE[precision]}
                record(work, section="long_texts", name=f"encode {length} tokens, {precision}, {PATHS[fused]}",
                       precision=precision, fused=fused, model=size, repeats=repeats, backend=report["backend"],
                       load_s=report["load_s"], process_s=report["process_s"], **row, **compared)


CHILDREN = {"long-texts": lambda a: child_long_texts(a[0], a[1], [int(x) for x in a[2].split(",")], a[3],
                                                     a[4] == "1", int(a[5]), a[6])}
