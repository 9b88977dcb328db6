"""`benchmarks.gpu --sections train`: one training step at BERT-base (L12/H768/A12), the
simplified Chinese vocabulary, batch 128, 32 + 32 tokens.

Ours in float32 and mixed_bfloat16 (each kernel choice of `simbert.kernels` flipped too,
and every written kernel off), against a PyTorch SimBERT (transformers `BertModel`, UniLM
mask as a 4-D additive mask, linear pooler, tied MLM head on the target rows, the same
two losses, fused AdamW): float32/TF32 eager, and bf16 autocast + torch.compile. Also the
device's measured bf16 matmul rate, each step's fraction of it, and the device time per
kernel of ours (a JAX profile of 3 steps).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from benchmarks.common import median_seconds, pair_rows
from benchmarks.gpu_common import SOURCE, TARGET, record, sizes


def step_batch(batch: int, vocab_size: int, seed: int = 0):
    """Rows `[CLS] a [SEP] b [SEP]` of SOURCE + TARGET tokens, random ids."""
    from simbert.data import target_positions

    token_ids, segment_ids = pair_rows(batch, SOURCE, TARGET, vocab_size, seed)
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
    from simbert.kernels import Platform
    from simbert.models import Transformer
    from simbert.training_model import build_training_model

    keras.backend.clear_session()
    config = BackboneConfig(vocab_size=vocab_size, max_position_embeddings=512, hidden_dropout_prob=dropout,
                            attention_probs_dropout_prob=dropout, **model)
    backbone = Transformer(config, "unilm", with_pool="linear", with_mlm="linear", dtype=precision, kernels=kernels)
    training = build_training_model(backbone, TrainingConfig(learning_rate=1e-5, precision=precision),
                                    Platform.current())
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
        seconds = time_ours_step(size.model, vocab_size, size.batch, size.steps, precision, kernels, dropout,
                                 trace_dir)
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
