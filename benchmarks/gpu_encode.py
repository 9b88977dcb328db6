"""`benchmarks.gpu --sections encode`: 8,000 AFQMC sentences through a random BERT-base
in an HF directory, batch 128, ours against sentence-transformers in bf16 on the same
weights.

Ours in float32 and in mixed_bfloat16, each a fresh process (children of the driver):
first pass with an empty and with a warm compilation cache, warm with each shape's
program built only when its first batch comes, and warm with the stored traces removed;
then the second pass. Ours also reports the first pass's host time by phase (JAX
tracing, lowering, compiling or loading from the cache), the time to tokenize the
sentences, and (in the warm-cache process) a steady pass with `Kernels.fused_attention`
off and on (which to keep here).
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from benchmarks.common import afqmc_path, median_seconds, read_sentences, run_child, write_hf_directory
from benchmarks.gpu_common import DRIVER, ONE_AT_A_TIME, CompilePhases, cache_states, record, sizes


def child_encode_ours(model_dir, texts_path, cache, batch, precision, compare_kernels, side_by_side):
    start = time.perf_counter()
    from simbert.api import SimBERT
    from simbert.source_pass import SourcePass

    if not side_by_side:  # each shape's program built when its first batch comes, none ahead in threads
        SourcePass.prepare_pooled = lambda self, shapes: None

    with open(texts_path, encoding="utf-8") as reader:
        texts = reader.read().split("\n")
    model = SimBERT.from_pretrained(model_dir, max_tokens=64, compilation_cache=cache, precision=precision)
    loaded = time.perf_counter()
    with CompilePhases() as phases:
        first = model.encode(texts, batch_size=batch)
    first_done = time.perf_counter()
    model.encode(texts, batch_size=batch)
    second_done = time.perf_counter()
    np.save(f"{texts_path}.ours_{precision}.npy", first)
    started = time.perf_counter()
    for text in texts:
        model.tokenizer.encode(text, maxlen=64)
    return {"load_s": loaded - start, "first_s": first_done - loaded, "second_s": second_done - first_done,
            "programs": model.compiled_programs, "tokenize_s": time.perf_counter() - started,
            **phases.report("first"), **(time_fused_attention(model, texts, batch) if compare_kernels else {})}


def time_fused_attention(model, texts, batch) -> dict:
    """A steady `encode` pass (median of 3) with `Kernels.fused_attention` off and on, the
    same weights and precision: whether `keras.ops.dot_product_attention` pays for
    inference here; and the largest difference between the two's vectors."""
    from simbert.api import SimBERT
    from simbert.models import Transformer

    backbone = model.backbone
    seconds, vectors = {}, {}
    for fused in (False, True):
        twin = Transformer(backbone.config, application=backbone.application, with_pool=backbone.with_pool,
                           with_mlm=backbone.with_mlm, dtype=backbone.dtype_policy,
                           kernels=dataclasses.replace(backbone.kernels, fused_attention=fused))
        twin.set_weights(backbone.get_weights())
        encoder = SimBERT(twin, model.tokenizer, model.max_tokens)
        vectors[fused] = encoder.encode(texts, batch_size=batch)
        seconds[f"pass_s_fused_attention_{str(fused).lower()}"] = median_seconds(
            lambda encoder=encoder: encoder.encode(texts, batch_size=batch), 3, warmup=0)
    return {**seconds, "fused_attention_max_difference": float(np.abs(vectors[True] - vectors[False]).max())}


def child_encode_theirs(model_dir, texts_path, batch):
    start = time.perf_counter()
    import torch
    from sentence_transformers import SentenceTransformer, models

    with open(texts_path, encoding="utf-8") as reader:
        texts = reader.read().split("\n")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    transformer = models.Transformer(model_dir, max_seq_length=64)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="cls")
    model = SentenceTransformer(modules=[transformer, pooling], device=device).to(torch.bfloat16)
    loaded = time.perf_counter()
    model.encode(texts, batch_size=batch, convert_to_numpy=True)
    first_done = time.perf_counter()
    model.encode(texts, batch_size=batch, convert_to_numpy=True)
    second_done = time.perf_counter()
    return {"load_s": loaded - start, "first_s": first_done - loaded, "second_s": second_done - first_done}


def section_encode(args, work, token_dict):
    size = sizes(args.small)
    model_dir = write_hf_directory(os.path.join(work, "hf_model"), size.model, token_dict)
    texts_path = os.path.join(work, "sentences.txt")
    with open(texts_path, "w", encoding="utf-8") as writer:
        writer.write("\n".join(read_sentences(afqmc_path(args.data), size.sentences)))
    for precision in ("float32", "mixed_bfloat16"):
        cache = os.path.join(work, f"encode_cache_{precision}")
        for label in cache_states(cache, precision, one_at_a_time=True):
            report = run_child(DRIVER, "encode-ours", model_dir, texts_path, cache, 128, precision,
                               int(label == "warm cache"), int(label != ONE_AT_A_TIME))
            record(work, section="encode", name=f"ours {precision}, fresh process, {label}",
                   sentences=size.sentences, **report)
    report = run_child(DRIVER, "encode-theirs", model_dir, texts_path, 128)
    record(work, section="encode", name="sentence-transformers bf16, fresh process", sentences=size.sentences,
           **report)


CHILDREN = {"encode-ours": lambda a: child_encode_ours(a[0], a[1], a[2], int(a[3]), a[4], a[5] == "1", a[6] == "1"),
            "encode-theirs": lambda a: child_encode_theirs(a[0], a[1], int(a[2]))}
