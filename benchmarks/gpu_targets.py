"""The one-GPU targets, read from `benchmarks.gpu`'s results: each target with the
number measured and whether it is met, and what each kernel A/B says to keep.

    python -m benchmarks.gpu_targets WORK/results.jsonl [MORE_RESULTS.jsonl ...]

Several files (one per section's run) read as one; a record measured twice counts
as its last measurement. `benchmarks.gpu` prints the same tables at the end of a run.
"""

from __future__ import annotations

import argparse
import json
from typing import Iterable

TRAIN_SPEEDUP = 1.3  # ours mixed_bfloat16 step against torch bf16 autocast + compile (the goal is 2)
FIT_FRACTION = 0.9  # Trainer.fit samples/s against the pure step's
ENCODE_SPEEDUP = 3.0  # ours first encode pass against sentence-transformers' first pass
GENERATE_STEADY_S = 0.060  # gen_synonyms(n=100, k=20), steady
GENERATE_FIRST_WARM_S = 3.0  # its first call in a fresh process, warm compilation cache
GIBBS_SPEEDUP = 20.0  # GibbsSampler's steps/s at one chain against the anchor's (issue 30)
GIBBS_CHAINS_RATIO = 5.0  # a GibbsSampler step of 100 chains against one chain's: below this
# Largest difference of the long-text vectors (unit length) between the written attention and
# dot_product_attention, by precision: TF32's rounding (2^-10; JAX's float32 matmuls on a GPU),
# two units of bfloat16's (2 x 2^-7).
LONG_TEXT_TOLERANCE = {"float32": 2 ** -10, "mixed_bfloat16": 2 ** -6}

THEIR_STEP = "torch bf16 autocast + compile"
THEIR_ENCODE = "sentence-transformers bf16, fresh process"


def read_records(paths: Iterable[str]) -> list[dict]:
    records = []
    for path in paths:
        with open(path, encoding="utf-8") as reader:
            records += [json.loads(line) for line in reader if line.strip()]
    return records


def latest(records: list[dict], section: str) -> dict[str, dict]:
    """Name -> the last record of that name in `section` (train records are also keyed by
    their kernels, since the A/B variants share a name)."""
    found = {}
    for record in records:
        if record.get("section") == section and "error" not in record:
            key = record["name"]
            if section == "train" and "kernels" in record:
                key = (key, json.dumps(record["kernels"], sort_keys=True))
            found[key] = record
    return found


def row(target: str, measured: str, wanted: str, met: bool) -> tuple[str, str, str, str]:
    return target, measured, wanted, "met" if met else "NOT met"


def target_rows(records: list[dict]) -> list[tuple[str, str, str, str]]:
    """(target, measured, wanted, verdict) for each target whose records are present."""
    rows = []
    train = latest(records, "train")
    default = {key[0]: record for key, record in train.items() if isinstance(key, tuple) and record["default_kernels"]}
    ours_bf16, ours_fp32 = default.get("ours mixed_bfloat16 (keras fit)"), default.get("ours float32 (keras fit)")
    if ours_bf16 and THEIR_STEP in train:
        speedup = train[THEIR_STEP]["ms"] / ours_bf16["ms"]
        rows.append(row("train step: ours mixed_bfloat16 against torch bf16 + compile",
                        f"{ours_bf16['ms']:.1f} against {train[THEIR_STEP]['ms']:.1f} ms: {speedup:.2f}x",
                        f">= {TRAIN_SPEEDUP}x (goal 2x)", speedup >= TRAIN_SPEEDUP))
    if ours_bf16 and ours_fp32:
        rows.append(row("train step: mixed_bfloat16 faster than float32",
                        f"{ours_bf16['ms']:.1f} against {ours_fp32['ms']:.1f} ms", "faster",
                        ours_bf16["ms"] < ours_fp32["ms"]))
    for name, record in latest(records, "fit").items():
        rows.append(row(f"{name}: samples/s against the pure step",
                        f"{record['pipeline_samples_per_second']:.0f} against "
                        f"{record['pure_step_samples_per_second']:.0f}: {record['fraction']:.0%}",
                        f">= {FIT_FRACTION:.0%}", record["fraction"] >= FIT_FRACTION))
    encode = latest(records, "encode")
    theirs = encode.pop(THEIR_ENCODE, None)
    if theirs:
        for name, record in encode.items():
            speedup = theirs["first_s"] / record["first_s"]
            rows.append(row(f"encode first pass, {name}",
                            f"{record['first_s']:.2f} against {theirs['first_s']:.2f} s: {speedup:.2f}x",
                            f">= {ENCODE_SPEEDUP:g}x", speedup >= ENCODE_SPEEDUP))
    for name, record in latest(records, "generate").items():
        if not name.startswith("ours"):
            continue
        rows.append(row(f"{name}: steady", f"{record['steady_s'] * 1e3:.0f} ms",
                        f"<= {GENERATE_STEADY_S * 1e3:.0f} ms", record["steady_s"] <= GENERATE_STEADY_S))
        if name.endswith(", warm cache"):
            rows.append(row(f"{name}: first call", f"{record['first_s']:.2f} s",
                            f"<= {GENERATE_FIRST_WARM_S:g} s", record["first_s"] <= GENERATE_FIRST_WARM_S))
    return rows + gibbs_rows(records) + long_text_rows(records)


def gibbs_rows(records: list[dict]) -> list[tuple[str, str, str, str]]:
    """Issue 30's Gibbs targets: one chain against the device's anchor (a PyTorch loop of
    bert4keras' example, not bert4keras), and 100 chains' step against one chain's."""
    rows = []
    gibbs = latest(records, "gibbs").values()
    ours = {record["chains"]: record for record in gibbs if record["implementation"] == "ours"}
    anchor = {record["chains"]: record for record in gibbs if record["implementation"] == "anchor"}
    if 1 in ours and 1 in anchor:
        speedup = ours[1]["steps_per_second"] / anchor[1]["steps_per_second"]
        rows.append(row("gibbs, 1 chain: ours against the PyTorch MLM loop (the anchor on the device, not bert4keras)",
                        f"{ours[1]['steps_per_second']:.0f} against {anchor[1]['steps_per_second']:.0f} steps/s: "
                        f"{speedup:.1f}x", f">= {GIBBS_SPEEDUP:g}x", speedup >= GIBBS_SPEEDUP))
    if 1 in ours and 100 in ours:
        ratio = ours[100]["ms_per_step"] / ours[1]["ms_per_step"]
        rows.append(row("gibbs, ours: a step of 100 chains against one chain's",
                        f"{ours[100]['ms_per_step']:.2f} against {ours[1]['ms_per_step']:.2f} ms: {ratio:.1f}x",
                        f"< {GIBBS_CHAINS_RATIO:g}x", ratio < GIBBS_CHAINS_RATIO))
    return rows


def long_text_rows(records: list[dict]) -> list[tuple[str, str, str, str]]:
    """For each precision: are dot_product_attention's long-text vectors the written path's?"""
    rows = []
    compared = [record for record in latest(records, "long_texts").values() if "max_difference" in record]
    for precision in dict.fromkeys(record["precision"] for record in compared):
        worst = max((record for record in compared if record["precision"] == precision),
                    key=lambda record: record["max_difference"])
        rows.append(row(f"long texts, {precision}: dot_product_attention's vectors equal the written path's",
                        f"largest difference {worst['max_difference']:.1e} (at {worst['length']} tokens)",
                        f"<= {worst['tolerance']:.1e}", worst["max_difference"] <= worst["tolerance"]))
    return rows


def kernel_rows(records: list[dict]) -> list[tuple[str, str, str]]:
    """(choice, measured, what it says) for each kernel A/B present: the training step's
    kernels flipped one at a time (mixed_bfloat16), fused attention on an encode pass,
    blocked top-k and the end check in the sampler."""
    rows = []
    train = [record for key, record in latest(records, "train").items()
             if isinstance(key, tuple) and key[0] == "ours mixed_bfloat16 (keras fit)"]
    default = next((record for record in train if record["default_kernels"]), None)
    if default:
        for record in train:
            flipped = [name for name, value in record["kernels"].items() if value != default["kernels"][name]]
            if len(flipped) == 1:
                name = flipped[0]
                keep = default["kernels"][name] if default["ms"] <= record["ms"] else record["kernels"][name]
                rows.append((f"train step {name}",
                             f"{default['kernels'][name]}: {default['ms']:.1f} ms, "
                             f"{record['kernels'][name]}: {record['ms']:.1f} ms", f"keep {keep}"))
    for name, record in latest(records, "encode").items():
        if "pass_s_fused_attention_false" in record:
            off, on = record["pass_s_fused_attention_false"], record["pass_s_fused_attention_true"]
            rows.append((f"fused_attention, {name}",
                         f"False: {off:.3f} s, True: {on:.3f} s (largest difference "
                         f"{record['fused_attention_max_difference']:.1e})", f"keep {on < off}"))
    for name, record in latest(records, "generate").items():
        platform = record.get("platform_kernels")
        if not platform:
            continue
        sampler = {key[len("sampler_s_"):]: value for key, value in record.items() if key.startswith("sampler_s_")}
        blocked = [key for key in sampler if key.startswith("blocked_top_k_")]
        for key in blocked:
            keep = platform["blocked_top_k"] if sampler["platform"] <= sampler[key] else not platform["blocked_top_k"]
            rows.append((f"blocked_top_k, {name}", f"{platform['blocked_top_k']}: {sampler['platform']:.4f} s, "
                         f"{not platform['blocked_top_k']}: {sampler[key]:.4f} s", f"keep {keep}"))
        checks = {platform["end_check_every"]: sampler["platform"],
                  **{int(key.rsplit("_", 1)[1]): value for key, value in sampler.items()
                     if key.startswith("end_check_every_")}}
        best = min(checks, key=checks.get)
        rows.append((f"end_check_every, {name}",
                     ", ".join(f"{every}: {seconds:.4f} s" for every, seconds in sorted(checks.items())),
                     f"fastest {best}"))
    return rows + long_text_kernel_rows(records)


def long_text_kernel_rows(records: list[dict]) -> list[tuple[str, str, str]]:
    """`Kernels.fused_attention` for inference, from the long texts (by precision): keep
    dot_product_attention where its vectors equal the written path's and it is no slower
    at every length; its memory beside (and whether it ran cuDNN's fused kernel)."""
    rows = []
    measured = list(latest(records, "long_texts").values())
    failed = {record["name"] for record in records if record.get("section") == "long_texts" and "error" in record}
    for precision in dict.fromkeys(record["precision"] for record in measured):
        paths = {fused: {record["length"]: record for record in measured
                         if record["precision"] == precision and record["fused"] == fused} for fused in (False, True)}
        written, fused = paths[False], paths[True]
        if not written:
            continue
        name = f"fused_attention, long texts {precision}"
        if not fused:
            reason = "failed (see above)" if f"{precision}, dot_product_attention" in failed else "not measured"
            rows.append((name, f"dot_product_attention {reason}", "keep False"))
            continue
        cells = [f"{length}: {written[length]['steady_ms']:.1f} / {fused[length]['steady_ms']:.1f} ms, "
                 f"{written[length]['memory_mb']:.0f} / {fused[length]['memory_mb']:.0f} MB"
                 + (", cuDNN" if fused[length].get("cudnn_attention") else "")
                 for length in sorted(written) if length in fused]
        keep = all(length in fused and fused[length]["steady_ms"] <= written[length]["steady_ms"]
                   and fused[length].get("max_difference", float("inf")) <= fused[length].get("tolerance", 0.0)
                   for length in written)
        rows.append((name, "written / fused: " + "; ".join(cells), f"keep {keep}"))
    return rows


def markdown(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def report(records: list[dict]) -> str:
    machines = [record for record in records if record.get("section") == "machine"]
    heading = ""
    if machines:
        machine = machines[-1]
        heading = (f"{machine['device']}, jax {machine['jax']}, keras {machine['keras']}, torch {machine['torch']}"
                   + (" (--small sizes: a dry run; the targets are for the full sizes on a GPU)"
                      if machine["small"] else "") + "\n\n")
    heading += "".join(f"section {record['section']} failed: {record['error']}\n\n"
                       for record in records if "error" in record)
    return heading + (markdown(("target", "measured", "wanted", "verdict"), target_rows(records)) + "\n\n"
            + markdown(("kernel choice", "measured", "says"), kernel_rows(records)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results.jsonl files written by benchmarks.gpu")
    print(report(read_records(parser.parse_args().results)))


if __name__ == "__main__":
    main()
