"""One-GPU benchmark, ours (Keras 3 on JAX) against PyTorch, both in the same run.

    KERAS_BACKEND=jax python -m benchmarks.gpu --data DATA_DIR --work WORK_DIR [--small]
        [--sections train,fit,encode,generate]

DATA_DIR holds afqmc/train.txt and vocab/chinese_bert_vocab.txt (as ../shared/data).
Sections (results as JSON lines in WORK_DIR/results.jsonl; at the end, the targets with
the numbers measured and what each kernel A/B says, `benchmarks.gpu_targets`):

- train: one training step at BERT-base (L12/H768/A12), the simplified Chinese vocabulary,
  batch 128, 32 + 32 tokens: ours float32 and mixed_bfloat16 (each kernel choice of
  `simbert.kernels` flipped too), against a PyTorch SimBERT (transformers `BertModel`,
  UniLM mask as a 4-D additive mask, linear pooler, tied MLM head on the target rows,
  the same two losses, fused AdamW): float32/TF32 eager, and bf16 autocast +
  torch.compile. Also the device's measured bf16 matmul rate.
- fit: `Trainer.fit` on the AFQMC similar pairs (6 layers of BERT-base's width, bf16:
  a faster step than BERT-base, so a harder test of the pipeline) against the pure step
  rate on the same batches.
- encode: 8,000 AFQMC sentences through an HF directory (batch 128): first pass in a
  fresh process (empty and warm compilation cache, warm with each shape's program built
  only when its first batch comes, and warm with the stored traces removed) and second
  pass, against
  sentence-transformers in bf16 on the same weights; ours in float32 and in
  mixed_bfloat16. Ours also reports the first pass's host time by phase (JAX tracing,
  lowering, compiling or loading from the cache), the time to tokenize the sentences,
  and (in the warm-cache process) a steady pass with `Kernels.fused_attention` off and
  on (which to keep here).
- generate: `gen_synonyms(n=100, k=20)` at BERT-base, 32 new tokens: first call in a
  fresh process (empty and warm cache, warm with the traces removed) and steady state,
  ours in float32 and mixed_bfloat16, against the original algorithm (full recompute per
  token, then encode and rank) in torch bf16. Ours also times (in the warm-cache
  process) the sampler alone with `Kernels.blocked_top_k` on and off and with
  `Kernels.end_check_every` 1, 8 and 32 (which to keep on this device).

`--small` shrinks every size (L2/H128, batch 16, 400 sentences, n=10) for a CPU dry run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import re
import shutil
import sys
import time

import numpy as np

from benchmarks.children import run_child
from benchmarks.gpu_targets import read_records, report

MODULE = "benchmarks.gpu"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
SMALL = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 512}
SOURCE = TARGET = 32
ONE_AT_A_TIME = "warm cache, programs built one at a time"
QUERY = "蚂蚁花呗怎么提前还款"


@dataclasses.dataclass
class Sizes:
    model: dict
    batch: int
    sentences: int
    samples: int
    steps: int
    fit_steps: int


def sizes(small: bool) -> Sizes:
    if small:
        return Sizes(SMALL, batch=16, sentences=400, samples=10, steps=3, fit_steps=40)
    return Sizes(BASE, batch=128, sentences=8000, samples=100, steps=20, fit_steps=300)


def record(work: str, **result) -> dict:
    """Print a result line and append it to WORK/results.jsonl."""
    print("RESULT " + json.dumps(result, ensure_ascii=False), flush=True)
    with open(os.path.join(work, "results.jsonl"), "a", encoding="utf-8") as writer:
        writer.write(json.dumps(result, ensure_ascii=False) + "\n")
    return result


def median_seconds(function, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# ------------------------------------------------------------------ data and models
def read_sentences(data: str, count: int) -> list[str]:
    seen, sentences = set(), []
    with open(os.path.join(data, "afqmc", "train.txt"), encoding="utf-8") as reader:
        for line in reader:
            for text in line.rstrip("\n").split("\t")[:2]:
                if text and text not in seen:
                    seen.add(text)
                    sentences.append(text)
                    if len(sentences) == count:
                        return sentences
    return sentences


def simplified_vocab(data: str) -> dict[str, int]:
    from simbert.tokenizer import SPECIAL_TOKENS, load_vocab

    token_dict, _ = load_vocab(os.path.join(data, "vocab", "chinese_bert_vocab.txt"), simplified=True,
                               startswith=list(SPECIAL_TOKENS))
    return token_dict


def write_hf_directory(directory: str, model: dict, token_dict: dict[str, int]) -> str:
    """A random BERT (backbone, pooler, MLM head) as transformers writes it, with the
    MLM bias of [PAD] and [SEP] at -30 so that no sample ends early on either side."""
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


def step_batch(batch: int, vocab_size: int, seed: int = 0):
    """Rows `[CLS] a [SEP] b [SEP]` of SOURCE + TARGET tokens, random ids."""
    from simbert.data import target_positions

    rng = np.random.default_rng(seed)
    length = SOURCE + TARGET
    token_ids = rng.integers(5, vocab_size, (batch, length)).astype("int32")
    token_ids[:, 0], token_ids[:, SOURCE - 1], token_ids[:, -1] = 2, 3, 3
    segment_ids = np.zeros((batch, length), "int32")
    segment_ids[:, SOURCE:] = 1
    positions, seq2seq = target_positions(token_ids, segment_ids)
    similarity = np.arange(batch, dtype="int32")
    return (token_ids, segment_ids, positions), {"seq2seq": seq2seq, "similarity": similarity}


def step_tflop(model: dict, batch: int, vocab_size: int) -> float:
    """Matmul TFLOP of a training step (forward x 3), every row of every block, the MLM
    head on the target rows."""
    hidden, inner, layers = model["hidden_size"], model["intermediate_size"], model["num_hidden_layers"]
    length = SOURCE + TARGET
    per_token = layers * (4 * hidden * hidden + 2 * hidden * inner + 2 * length * hidden)
    head = batch * TARGET * (hidden * hidden + hidden * vocab_size)
    return 3 * 2 * (batch * length * per_token + head) / 1e12


# ----------------------------------------------------------------------- train
def device_time_by_kernel(trace_dir: str, top: int = 25) -> list[tuple[str, float]]:
    """Milliseconds per kernel name on the device (summed over the traced steps), from
    the Chrome-format trace `jax.profiler.trace` writes: the events of the processes
    named after a GPU (on a CPU run, every process)."""
    import glob
    import gzip

    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))[-1]
    with gzip.open(path, "rt") as reader:
        events = json.load(reader)["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    gpu = {pid for pid, name in names.items() if "GPU" in name or "gpu" in name}
    totals: dict[str, float] = {}
    sources: dict[str, str] = {}
    for event in events:
        if event.get("ph") == "X" and (not gpu or event["pid"] in gpu):
            totals[event["name"]] = totals.get(event["name"], 0.0) + event.get("dur", 0) / 1e3
            sources.setdefault(event["name"], json.dumps(event.get("args", {}), ensure_ascii=False)[:300])
    return [(name, ms, sources[name]) for name, ms in sorted(totals.items(), key=lambda item: -item[1])[:top]]


def time_ours_step(model: dict, vocab_size: int, batch: int, steps: int, precision: str, kernels,
                   dropout: float = 0.1, trace_dir: str | None = None) -> float:
    import keras

    from simbert.config import BackboneConfig, TrainingConfig
    from simbert.models import Transformer
    from simbert.trainer import build_training_model

    keras.backend.clear_session()
    config = BackboneConfig(vocab_size=vocab_size, max_position_embeddings=512, hidden_dropout_prob=dropout,
                            attention_probs_dropout_prob=dropout, **model)
    backbone = Transformer(config, "unilm", with_pool="linear", with_mlm="linear", dtype=precision, kernels=kernels)
    training = build_training_model(backbone, TrainingConfig(learning_rate=1e-5, precision=precision))
    inputs, targets = step_batch(batch, vocab_size)

    def repeated():
        while True:
            yield inputs, targets

    def fit_seconds(count):
        start = time.perf_counter()
        training.fit(repeated(), steps_per_epoch=count, epochs=1, verbose=0)
        return (time.perf_counter() - start) / count

    fit_seconds(3)  # compiles
    assert training.step_traces == 1, training.step_traces
    seconds = fit_seconds(steps)
    if trace_dir is not None:
        import jax

        with jax.profiler.trace(trace_dir):
            fit_seconds(3)
    return seconds


def torch_simbert(model: dict, vocab_size: int):
    import torch
    import transformers

    class TorchSimBERT(torch.nn.Module):
        """SimBERT in PyTorch: BertModel with a 4-D UniLM mask, linear pooler, tied MLM
        head on the target rows, seq2seq + in-batch similarity losses."""

        def __init__(self):
            super().__init__()
            config = transformers.BertConfig(vocab_size=vocab_size, max_position_embeddings=512,
                                             attn_implementation="sdpa", **model)
            self.bert = transformers.BertModel(config, add_pooling_layer=False)
            hidden = model["hidden_size"]
            self.pooler = torch.nn.Linear(hidden, hidden)
            self.transform = torch.nn.Linear(hidden, hidden)
            self.norm = torch.nn.LayerNorm(hidden, eps=1e-12)
            self.bias = torch.nn.Parameter(torch.zeros(vocab_size))

        def forward(self, token_ids, segment_ids, positions, targets, weights):
            cumulative = segment_ids.cumsum(1)
            visible = (cumulative[:, None, :] <= cumulative[:, :, None]) & (token_ids != 0)[:, None, :]
            mask = torch.zeros(visible.shape, dtype=torch.float32, device=visible.device)
            mask = mask.masked_fill(~visible, torch.finfo(torch.float32).min)[:, None]
            hidden = self.bert(input_ids=token_ids, token_type_ids=segment_ids, attention_mask=mask).last_hidden_state
            pooled = self.pooler(hidden[:, 0])
            rows = torch.gather(hidden, 1, positions[:, :, None].expand(-1, -1, hidden.shape[-1]))
            rows = self.norm(torch.nn.functional.gelu(self.transform(rows)))
            logits = (rows @ self.bert.embeddings.word_embeddings.weight.T + self.bias).float()
            token_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
            seq2seq = (token_loss * weights.flatten()).sum() / weights.sum().clamp(min=1)
            vectors = torch.nn.functional.normalize(pooled.float(), dim=-1)
            similarities = 30.0 * vectors @ vectors.T
            similarities = similarities.masked_fill(torch.eye(len(vectors), dtype=torch.bool,
                                                              device=vectors.device), -1e12)
            partners = torch.arange(len(vectors), device=vectors.device) ^ 1
            return seq2seq + torch.nn.functional.cross_entropy(similarities, partners)

    return TorchSimBERT()


def time_torch_step(model: dict, vocab_size: int, batch: int, steps: int, bf16_compile: bool) -> float:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    network = torch_simbert(model, vocab_size).to(device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-5, weight_decay=0.01, fused=device == "cuda")
    (token_ids, segment_ids, positions), targets = step_batch(batch, vocab_size)
    tensors = [torch.tensor(a, dtype=torch.long, device=device) for a in
               (token_ids, segment_ids, positions, targets["seq2seq"][..., 0])]
    weights = torch.tensor(targets["seq2seq"][..., 1], dtype=torch.float32, device=device)
    forward = torch.compile(network) if bf16_compile else network

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16_compile):
            loss = forward(*tensors, weights)
        loss.backward()
        optimizer.step()
        return loss.item()

    return median_seconds(step, steps, warmup=5 if bf16_compile else 3)


def bf16_matmul_tflops() -> float:
    import jax
    import jax.numpy as jnp

    size = 8192 if jax.default_backend() == "gpu" else 1024
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.bfloat16)
    matmul = jax.jit(lambda x, y: x @ y)
    seconds = median_seconds(lambda: matmul(a, b).block_until_ready(), 20)
    return 2 * size ** 3 / seconds / 1e12


def section_train(args, work, token_dict):
    from simbert.kernels import Kernels, default_kernels

    size = sizes(args.small)
    vocab_size = len(token_dict)
    tflop = step_tflop(size.model, size.batch, vocab_size)
    peak = bf16_matmul_tflops()
    record(work, section="train", name="bf16 matmul peak (measured)", tflops=peak)
    default = default_kernels()
    variants = [("float32", default), ("mixed_bfloat16", default)]
    for field in dataclasses.fields(Kernels)[:3]:  # fused attention does not apply with attention dropout
        flipped = dataclasses.replace(default, **{field.name: not getattr(default, field.name)})
        variants.append(("mixed_bfloat16", flipped))
    autodiff = Kernels(written_gelu=False, written_layer_norm=False, written_cross_entropy=False,
                       fused_attention=True)
    variants += [("mixed_bfloat16", autodiff), ("float32", autodiff)]
    variants = [(precision, kernels, 0.1) for precision, kernels in variants]
    def ours(precision, kernels, dropout, profile=False):
        trace_dir = os.path.join(work, f"trace_{precision}") if profile else None
        seconds = time_ours_step(size.model, vocab_size, size.batch, size.steps, precision, kernels, dropout, trace_dir)
        record(work, section="train", name=f"ours {precision} (keras fit)", dropout=dropout,
               kernels=dataclasses.asdict(kernels), default_kernels=kernels == default, ms=seconds * 1e3,
               tflops=tflop / seconds, fraction_of_bf16_peak=tflop / seconds / peak)
        if profile:
            record(work, section="profile", name=f"ours {precision}: device ms per kernel over 3 steps",
                   kernels=[(name[:100], round(ms, 2), source)
                            for name, ms, source in device_time_by_kernel(trace_dir)])

    for variant in variants[:2]:
        ours(*variant, profile=True)
    for compiled in (False, True):
        seconds = time_torch_step(size.model, vocab_size, size.batch, size.steps, compiled)
        record(work, section="train", name="torch bf16 autocast + compile" if compiled else "torch fp32/TF32 eager",
               ms=seconds * 1e3, tflops=tflop / seconds, fraction_of_bf16_peak=tflop / seconds / peak)
    for variant in variants[2:]:
        ours(*variant)


# ------------------------------------------------------------------------- fit
def step_timer(batch_size: int):
    """A Keras callback noting the time each step's losses are read (when the step is
    done); its `samples_per_second()` is the rate over the second half of the steps, after
    every batch shape is compiled. `async_safe`, as the trainer's callbacks are, so that it
    does not make `fit` wait for each step before starting the next."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        async_safe = True

        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())  # after Keras read `logs`: the step is done

        def samples_per_second(self):
            times = sorted(self.times)  # batch ends may run in several threads
            half = len(times) // 2
            return (len(times) - 1 - half) * batch_size / (times[-1] - times[half])

    return StepTimer()


def section_fit(args, work, token_dict):
    import itertools

    import keras

    from simbert.config import TrainConfig
    from simbert.trainer import Trainer

    size = sizes(args.small)
    vocab_path = os.path.join(work, "fit_vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as writer:
        writer.write("\n".join(sorted(token_dict, key=token_dict.get)) + "\n")
    config = TrainConfig.from_dict({
        "model": {"model_type": "bert", "vocab": vocab_path,
                  "config": {**size.model, "num_hidden_layers": size.model["num_hidden_layers"] // 2 or 1,
                             "max_position_embeddings": 512}},
        "data": {"train": os.path.join(args.data, "afqmc", "train.txt"), "format": "pairs", "max_chars": 32},
        "training": {"steps": size.fit_steps, "batch_size": size.batch, "learning_rate": 1e-5,
                     "precision": "mixed_bfloat16", "compilation_cache": None},
        "output": {"dir": os.path.join(work, "fit_run"), "save_every": 10 ** 6, "log_every": 10},
    }, "benchmark")
    keras.backend.clear_session()
    trainer = Trainer(config)
    batches = trainer._batches(0)
    prepared = [next(batches) for _ in range(size.fit_steps)]
    batches.close()
    pure = step_timer(size.batch)
    for callbacks in ([], [pure]):  # the first pass compiles every batch shape of the run
        trainer.training_model.fit((batch for batch in itertools.cycle(prepared)), steps_per_epoch=size.fit_steps,
                                   epochs=1, verbose=0, callbacks=callbacks)
    pipeline = step_timer(size.batch)
    result = trainer.fit(callbacks=[pipeline])  # the same batches, from the file, through the workers
    record(work, section="fit", name="Trainer.fit, AFQMC pairs, mixed_bfloat16, 6 layers", workers=trainer.workers,
           steps=size.fit_steps, pipeline_samples_per_second=pipeline.samples_per_second(),
           pure_step_samples_per_second=pure.samples_per_second(),
           fraction=pipeline.samples_per_second() / pure.samples_per_second(),
           compiled_programs=result.compiled_programs, batch_shapes=result.batch_shapes,
           input_wait_s=result.input_wait_s)


class CompilePhases(logging.Handler):
    """Sums the seconds JAX reports (at DEBUG, from `jax._src.dispatch`) for tracing,
    lowering to MLIR and XLA compilation (or loading from the persistent cache), and
    counts the cache hits: the host time of a first call, apart from running."""

    PHASES = {"tracing": "trace_s", "jaxpr to MLIR": "lower_s", "XLA compilation": "compile_s"}

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.seconds = {key: 0.0 for key in self.PHASES.values()}
        self.cache_hits = 0

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Persistent compilation cache hit"):
            self.cache_hits += 1
        timed = re.match(r"Finished (tracing|jaxpr to MLIR|XLA compilation)\b.* in ([0-9.]+) sec", message)
        if timed:
            self.seconds[self.PHASES[timed.group(1)]] += float(timed.group(2))

    def __enter__(self):
        for name in ("jax._src.dispatch", "jax._src.compiler"):
            logging.getLogger(name).setLevel(logging.DEBUG)
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc):
        for name in ("jax._src.dispatch", "jax._src.compiler"):
            logging.getLogger(name).removeHandler(self)

    def report(self, prefix: str) -> dict:
        return {**{f"{prefix}_{key}": round(value, 3) for key, value in self.seconds.items()},
                f"{prefix}_cache_hits": self.cache_hits}


# ---------------------------------------------------------------------- encode
def child_encode_ours(model_dir, texts_path, cache, batch, precision, compare_kernels, side_by_side):
    start = time.perf_counter()
    from simbert.api import SimBERT
    from simbert.compiled import CompiledFunction

    if not side_by_side:  # each shape's program built when its first batch comes, as before
        CompiledFunction.prepare = lambda self, calls: None

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
            lambda: encoder.encode(texts, batch_size=batch), 3, warmup=0)
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


def cache_states(cache: str, precision: str, one_at_a_time: bool = False):
    """The label of each fresh-process run of ours: with an empty compilation cache, a
    warm one, and (float32 only, to spare device time) a warm one whose stored traces
    (`simbert.trace_store`) are removed first, so that the process traces again: what
    storing them saves. Before that, with `one_at_a_time`, a warm one whose programs are
    built one at a time as batches need them, not side by side ahead
    (`CompiledFunction.prepare`)."""
    from simbert.trace_store import SUBDIRECTORY

    yield "empty cache"
    yield "warm cache"
    if precision == "float32":
        if one_at_a_time:
            yield ONE_AT_A_TIME
        shutil.rmtree(os.path.join(cache, SUBDIRECTORY), ignore_errors=True)
        yield "warm XLA cache, traces removed"


def section_encode(args, work, token_dict):
    size = sizes(args.small)
    model_dir = write_hf_directory(os.path.join(work, "hf_model"), size.model, token_dict)
    texts_path = os.path.join(work, "sentences.txt")
    with open(texts_path, "w", encoding="utf-8") as writer:
        writer.write("\n".join(read_sentences(args.data, size.sentences)))
    for precision in ("float32", "mixed_bfloat16"):
        cache = os.path.join(work, f"encode_cache_{precision}")
        for label in cache_states(cache, precision, one_at_a_time=True):
            report = run_child(MODULE, "encode-ours", model_dir, texts_path, cache, 128, precision,
                               int(label == "warm cache"), int(label != ONE_AT_A_TIME))
            record(work, section="encode", name=f"ours {precision}, fresh process, {label}",
                   sentences=size.sentences, **report)
    report = run_child(MODULE, "encode-theirs", model_dir, texts_path, 128)
    record(work, section="encode", name="sentence-transformers bf16, fresh process", sentences=size.sentences,
           **report)


# -------------------------------------------------------------------- generate
def child_generate_ours(model_dir, cache, samples, repeats, precision, compare_kernels):
    start = time.perf_counter()
    from simbert.api import SimBERT

    model = SimBERT.from_pretrained(model_dir, max_tokens=SOURCE, compilation_cache=cache, precision=precision)
    loaded = time.perf_counter()
    with CompilePhases() as phases:
        model.gen_synonyms(QUERY, n=samples, k=20)
    first_done = time.perf_counter()
    steady = median_seconds(lambda: model.gen_synonyms(QUERY, n=samples, k=20), repeats, warmup=1)
    programs = model.compiled_programs
    return {"load_s": loaded - start, "first_s": first_done - loaded, "steady_s": steady,
            "programs": programs, **phases.report("first"),
            **(time_sampler_kernels(model, samples, repeats) if compare_kernels else {})}


def time_sampler_kernels(model, samples, repeats) -> dict:
    """The sampler alone (`sample(n, topk=5)`, steady) with this platform's kernels, with
    `Kernels.blocked_top_k` flipped, and checking for ended samples every 8 steps and
    never (`Kernels.end_check_every`; each check makes the GPU wait for the loop's
    condition): which of them pay here."""
    from simbert.generation import CachedDecoder

    source = model.tokenizer.encode(QUERY, maxlen=SOURCE)[0]
    kernels = model.backbone.kernels
    variants = {"platform": kernels,
                f"blocked_top_k_{str(not kernels.blocked_top_k).lower()}":
                    dataclasses.replace(kernels, blocked_top_k=not kernels.blocked_top_k),
                "end_check_every_8": dataclasses.replace(kernels, end_check_every=8),
                f"end_check_every_{SOURCE}": dataclasses.replace(kernels, end_check_every=SOURCE)}
    seconds = {}
    for label, variant in variants.items():
        model.backbone.kernels = variant
        decoder = CachedDecoder(model.backbone, model.tokenizer.sep_id, SOURCE, SOURCE, model.source_pass)
        seconds[f"sampler_s_{label}"] = median_seconds(
            lambda: decoder.sample(source, n=samples, topk=5, seed=0), repeats, warmup=1)
    model.backbone.kernels = kernels
    return {"platform_kernels": dataclasses.asdict(kernels), **seconds}


def child_generate_theirs(model_dir, samples, repeats):
    """The original algorithm in torch bf16: each new token recomputes the whole
    sequence (UniLM mask), top-k 5 sampling; then the candidates are encoded ([CLS]
    vector, no pooler weights in this HF model) and ranked by cosine."""
    start = time.perf_counter()
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.BertForMaskedLM.from_pretrained(model_dir, attn_implementation="sdpa",
                                                         dtype=torch.bfloat16).to(device).eval()
    tokenizer = transformers.BertTokenizerFast.from_pretrained(model_dir)
    loaded = time.perf_counter()

    @torch.inference_mode()
    def gen_synonyms():
        source = tokenizer(QUERY, return_tensors="pt")["input_ids"].to(device)
        ids = source.repeat(samples, 1)
        segments = torch.zeros_like(ids)
        for _ in range(SOURCE):
            cumulative = segments.cumsum(1)
            visible = (cumulative[:, None, :] <= cumulative[:, :, None])[:, None]
            hidden = model.bert(input_ids=ids, token_type_ids=segments, attention_mask=visible).last_hidden_state
            logits = model.cls(hidden[:, -1]).float()
            top = torch.topk(logits, 5, dim=-1)
            picked = top.indices.gather(1, torch.multinomial(torch.softmax(top.values, -1), 1))
            ids = torch.cat([ids, picked], 1)
            segments = torch.cat([segments, torch.ones_like(picked)], 1)
        texts = tokenizer.batch_decode(ids[:, source.shape[1]:], skip_special_tokens=True)
        encoded = tokenizer([QUERY, *texts], return_tensors="pt", padding=True, truncation=True,
                            max_length=64).to(device)
        vectors = model.bert(**encoded).last_hidden_state[:, 0].float()
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
        order = torch.argsort(vectors[1:] @ vectors[0], descending=True)[:20].tolist()
        return [texts[i] for i in order]

    gen_synonyms()
    first_done = time.perf_counter()
    steady = median_seconds(gen_synonyms, repeats, warmup=1)
    return {"load_s": loaded - start, "first_s": first_done - loaded, "steady_s": steady}


def section_generate(args, work, token_dict):
    size = sizes(args.small)
    model_dir = write_hf_directory(os.path.join(work, "hf_model"), size.model, token_dict)
    for precision in ("float32", "mixed_bfloat16"):
        cache = os.path.join(work, f"generate_cache_{precision}")
        for label in cache_states(cache, precision):
            report = run_child(MODULE, "generate-ours", model_dir, cache, size.samples, 5, precision,
                               int(label == "warm cache"))
            record(work, section="generate", name=f"ours gen_synonyms {precision}, fresh process, {label}",
                   n=size.samples, **report)
    report = run_child(MODULE, "generate-theirs", model_dir, size.samples, 5)
    record(work, section="generate", name="torch bf16 original algorithm, fresh process", n=size.samples, **report)


# ------------------------------------------------------------------------ main
CHILDREN = {"encode-ours": lambda a: child_encode_ours(a[0], a[1], a[2], int(a[3]), a[4], a[5] == "1", a[6] == "1"),
            "encode-theirs": lambda a: child_encode_theirs(a[0], a[1], int(a[2])),
            "generate-ours": lambda a: child_generate_ours(a[0], a[1], int(a[2]), int(a[3]), a[4], a[5] == "1"),
            "generate-theirs": lambda a: child_generate_theirs(a[0], int(a[1]), int(a[2]))}
SECTIONS = {"train": section_train, "fit": section_fit, "encode": section_encode, "generate": section_generate}


def describe_machine() -> dict:
    import jax
    import keras
    import torch

    device = jax.devices()[0]
    return {"device": getattr(device, "device_kind", str(device)), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__, "keras": keras.__version__,
            "torch": torch.__version__, "backend": keras.backend.backend(), "cpus": os.cpu_count()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--work", default=os.path.join(ROOT, "outputs", "gpu_benchmark"))
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--small", action="store_true", help="tiny sizes: a CPU dry run")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](args.child[1:])))
        return
    os.makedirs(args.work, exist_ok=True)
    token_dict = simplified_vocab(args.data)
    record(args.work, section="machine", command=" ".join(sys.argv), small=args.small, **describe_machine())
    for name in args.sections.split(","):
        try:
            SECTIONS[name](args, args.work, token_dict)
        except Exception as error:  # noqa: BLE001 (one failed section must not lose the others)
            record(args.work, section=name, error=f"{type(error).__name__}: {error}"[-3000:])
    print(report(read_records([os.path.join(args.work, "results.jsonl")])))


if __name__ == "__main__":
    main()
