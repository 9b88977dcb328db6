"""`benchmarks.gpu --sections generate`: `gen_synonyms(n=100, k=20)` at BERT-base (a random
BERT in an HF directory), 32 new tokens, ours against the original algorithm (full
recompute per token, then encode and rank) in torch bf16.

Ours in float32 and mixed_bfloat16, each a fresh process (children of the driver): the
first call with an empty and with a warm compilation cache, and warm with the stored
traces removed; then the steady state. Ours also times (in the warm-cache process) the
sampler alone with `Kernels.blocked_top_k` on and off and with `Kernels.end_check_every`
1, 8 and 32 (which to keep on this device).
"""

from __future__ import annotations

import dataclasses
import os
import time

from benchmarks.common import QUERY, median_seconds, run_child, write_hf_directory
from benchmarks.gpu_common import DRIVER, SOURCE, CompilePhases, cache_states, record, sizes


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
            lambda decoder=decoder: decoder.sample(source, n=samples, topk=5, seed=0), repeats, warmup=1)
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
            report = run_child(DRIVER, "generate-ours", model_dir, cache, size.samples, 5, precision,
                               int(label == "warm cache"))
            record(work, section="generate", name=f"ours gen_synonyms {precision}, fresh process, {label}",
                   n=size.samples, **report)
    report = run_child(DRIVER, "generate-theirs", model_dir, size.samples, 5)
    record(work, section="generate", name="torch bf16 original algorithm, fresh process", n=size.samples, **report)


CHILDREN = {"generate-ours": lambda a: child_generate_ours(a[0], a[1], int(a[2]), int(a[3]), a[4], a[5] == "1"),
            "generate-theirs": lambda a: child_generate_theirs(a[0], int(a[1]), int(a[2]))}
