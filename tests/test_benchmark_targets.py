"""The GPU benchmark's verdicts (`benchmarks.gpu_targets`) from records written by hand."""

import json

from benchmarks.gpu_targets import kernel_rows, read_records, report, target_rows

DEFAULT = {"written_gelu": True, "written_layer_norm": True, "written_cross_entropy": True,
           "fused_attention": False, "blocked_top_k": False, "end_check_every": 1}
RECORDS = [
    {"section": "machine", "device": "NVIDIA H100 80GB HBM3", "jax": "0.11.2", "keras": "3.15.1",
     "torch": "2.9.0", "small": False},
    {"section": "train", "name": "ours float32 (keras fit)", "kernels": DEFAULT, "default_kernels": True, "ms": 32.5},
    {"section": "train", "name": "ours mixed_bfloat16 (keras fit)", "kernels": DEFAULT, "default_kernels": True,
     "ms": 40.0},  # measured again below: the last one counts
    {"section": "train", "name": "torch bf16 autocast + compile", "ms": 43.2},
    {"section": "train", "name": "ours mixed_bfloat16 (keras fit)", "kernels": {**DEFAULT, "written_gelu": False},
     "default_kernels": False, "ms": 18.3},
    {"section": "train", "name": "ours mixed_bfloat16 (keras fit)", "kernels": DEFAULT, "default_kernels": True,
     "ms": 16.9},
    {"section": "fit", "name": "Trainer.fit", "pipeline_samples_per_second": 5500.0,
     "pure_step_samples_per_second": 7500.0, "fraction": 5500 / 7500},
    {"section": "encode", "name": "ours float32, fresh process, warm cache", "first_s": 0.9,
     "pass_s_fused_attention_false": 0.50, "pass_s_fused_attention_true": 0.40,
     "fused_attention_max_difference": 2e-6},
    {"section": "encode", "name": "sentence-transformers bf16, fresh process", "first_s": 2.96},
    {"section": "generate", "name": "ours gen_synonyms float32, fresh process, warm cache", "first_s": 1.34,
     "steady_s": 0.076, "platform_kernels": DEFAULT, "sampler_s_platform": 0.039,
     "sampler_s_blocked_top_k_true": 0.031, "sampler_s_end_check_every_8": 0.035,
     "sampler_s_end_check_every_32": 0.041},
    {"section": "generate", "name": "torch bf16 original algorithm, fresh process", "first_s": 3.0, "steady_s": 0.25},
    {"section": "encode", "error": "RuntimeError: out of memory"},
    {"section": "gibbs", "name": "ours GibbsSampler float32, 1 chain, fresh process", "implementation": "ours",
     "chains": 1, "ms_per_step": 0.5, "steps_per_second": 2000.0},
    {"section": "gibbs", "name": "PyTorch loop, 1 chain, fresh process", "implementation": "anchor", "chains": 1,
     "ms_per_step": 12.5, "steps_per_second": 80.0},
    {"section": "gibbs", "name": "ours GibbsSampler float32, 100 chains, fresh process", "implementation": "ours",
     "chains": 100, "ms_per_step": 3.0, "steps_per_second": 333.3},
    {"section": "gibbs", "name": "PyTorch loop, 100 chains, fresh process", "implementation": "anchor",
     "chains": 100, "ms_per_step": 14.0, "steps_per_second": 71.4},
    *[{"section": "long_texts", "name": f"encode {length} tokens, {precision}, {'fused' if fused else 'written'}",
       "precision": precision, "fused": fused, "length": length, "steady_ms": ms, "memory_mb": mb,
       "cudnn_attention": fused and precision != "float32",
       **({"max_difference": difference, "tolerance": 2 ** -10 if precision == "float32" else 2 ** -6}
          if fused else {})}
      for precision, fused, length, ms, mb, difference in (
          ("float32", False, 1024, 5.0, 310, None), ("float32", False, 4096, 61.0, 3300, None),
          ("float32", True, 1024, 5.4, 300, 2e-4), ("float32", True, 4096, 60.0, 3200, 3e-3),
          ("mixed_bfloat16", False, 1024, 3.0, 200, None), ("mixed_bfloat16", False, 4096, 30.0, 1700, None),
          ("mixed_bfloat16", True, 1024, 2.0, 40, 4e-3), ("mixed_bfloat16", True, 4096, 12.0, 60, 6e-3))],
]


def test_each_target_is_measured_against_its_threshold():
    rows = {target: (measured, verdict) for target, measured, _, verdict in target_rows(RECORDS)}
    assert rows["train step: ours mixed_bfloat16 against torch bf16 + compile"] == (
        "16.9 against 43.2 ms: 2.56x", "met")
    assert rows["train step: mixed_bfloat16 faster than float32"] == ("16.9 against 32.5 ms", "met")
    assert rows["Trainer.fit: samples/s against the pure step"] == ("5500 against 7500: 73%", "NOT met")
    assert rows["encode first pass, ours float32, fresh process, warm cache"] == (
        "0.90 against 2.96 s: 3.29x", "met")
    assert rows["ours gen_synonyms float32, fresh process, warm cache: steady"] == ("76 ms", "NOT met")
    assert rows["ours gen_synonyms float32, fresh process, warm cache: first call"] == ("1.34 s", "met")
    assert rows["gibbs, 1 chain: ours against the PyTorch MLM loop (the anchor on the device, not bert4keras)"] == (
        "2000 against 80 steps/s: 25.0x", "met")
    assert rows["gibbs, ours: a step of 100 chains against one chain's"] == ("3.00 against 0.50 ms: 6.0x", "NOT met")
    assert rows["long texts, float32: dot_product_attention's vectors equal the written path's"] == (
        "largest difference 3.0e-03 (at 4096 tokens)", "NOT met")
    assert rows["long texts, mixed_bfloat16: dot_product_attention's vectors equal the written path's"] == (
        "largest difference 6.0e-03 (at 4096 tokens)", "met")
    assert len(rows) == 10  # the torch generation record is a baseline, not a target


def test_each_kernel_ab_says_which_to_keep():
    rows = {choice: says for choice, _, says in kernel_rows(RECORDS)}
    assert rows == {"train step written_gelu": "keep True",
                    "fused_attention, ours float32, fresh process, warm cache": "keep True",
                    "blocked_top_k, ours gen_synonyms float32, fresh process, warm cache": "keep True",
                    "end_check_every, ours gen_synonyms float32, fresh process, warm cache": "fastest 8",
                    "fused_attention, long texts float32": "keep False",  # slower at 1k, and not equal
                    "fused_attention, long texts mixed_bfloat16": "keep True"}
    measured = {choice: text for choice, text, _ in kernel_rows(RECORDS)}
    assert measured["fused_attention, long texts mixed_bfloat16"] == (
        "written / fused: 1024: 3.0 / 2.0 ms, 200 / 40 MB, cuDNN; 4096: 30.0 / 12.0 ms, 1700 / 60 MB, cuDNN")


def test_a_failed_fused_path_keeps_the_written_attention():
    written = {"section": "long_texts", "name": "encode 1024 tokens, float32, written softmax",
               "precision": "float32", "fused": False, "length": 1024, "steady_ms": 5.0, "memory_mb": 300}
    failed = {"section": "long_texts", "name": "float32, dot_product_attention", "error": "RuntimeError: cuDNN"}
    assert kernel_rows([written, failed]) == [("fused_attention, long texts float32",
                                               "dot_product_attention failed (see above)", "keep False")]
    assert target_rows([written, failed]) == []


def test_results_files_read_as_one_report(tmp_path):
    paths = []
    for i, part in enumerate((RECORDS[:6], RECORDS[6:])):
        paths.append(tmp_path / f"results_{i}.jsonl")
        paths[-1].write_text("".join(json.dumps(record) + "\n" for record in part), encoding="utf-8")
    text = report(read_records(paths))
    assert text.startswith("NVIDIA H100 80GB HBM3, jax 0.11.2")
    assert "section encode failed: RuntimeError: out of memory" in text
    assert "| train step: ours mixed_bfloat16 against torch bf16 + compile | 16.9 against 43.2 ms: 2.56x |" in text
