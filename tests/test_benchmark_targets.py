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
    assert len(rows) == 6  # the torch generation record is a baseline, not a target


def test_each_kernel_ab_says_which_to_keep():
    rows = {choice: says for choice, _, says in kernel_rows(RECORDS)}
    assert rows == {"train step written_gelu": "keep True",
                    "fused_attention, ours float32, fresh process, warm cache": "keep True",
                    "blocked_top_k, ours gen_synonyms float32, fresh process, warm cache": "keep True",
                    "end_check_every, ours gen_synonyms float32, fresh process, warm cache": "fastest 8"}


def test_results_files_read_as_one_report(tmp_path):
    paths = []
    for i, part in enumerate((RECORDS[:6], RECORDS[6:])):
        paths.append(tmp_path / f"results_{i}.jsonl")
        paths[-1].write_text("".join(json.dumps(record) + "\n" for record in part), encoding="utf-8")
    text = report(read_records(paths))
    assert text.startswith("NVIDIA H100 80GB HBM3, jax 0.11.2")
    assert "section encode failed: RuntimeError: out of memory" in text
    assert "| train step: ours mixed_bfloat16 against torch bf16 + compile | 16.9 against 43.2 ms: 2.56x |" in text
