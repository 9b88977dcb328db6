"""`benchmarks.gpu --sections gibbs`: `simbert.gibbs.GibbsSampler` (n chains in one compiled
`while_loop`) on the device, 1 chain and 100 chains, against a hand-written PyTorch loop
of bert4keras' examples/basic_gibbs_sampling_via_mlm.py on the same weights. The device
has no bert4keras (nor TensorFlow): the anchor here is that PyTorch loop, not bert4keras
(benchmarks/gibbs_speed.py measures against bert4keras itself, on a CPU).

Model and start as benchmarks/gibbs_speed.py: 6 layers, hidden 384, 12 heads, FFN 1536,
vocabulary 13685, random weights (`write_random_model`; transformers reads the `hf`
export of the same model), `[CLS]` + 14 `[MASK]` + `[SEP]`, every inner position
editable. A call is `GPU_STEPS` steps of every chain (one call of ours' compiled loop);
each side and n in a fresh process (children of the driver): load, the first call
(compiling included; ours also by phase: JAX tracing, lowering, compiling), the median
of `REPEATS` later calls; ms a step = steady call / steps.

Ours: `gibbs_speed.load_sampler` / `time_sampler`, float32 (JAX's float32 matmuls on a GPU
are TF32). Anchor: transformers' `BertForMaskedLM` (sdpa attention, float32 with TF32
matmuls allowed, eager, `torch.inference_mode`); each step picks a position per chain
among all but `[CLS]` and `[SEP]`, writes `[MASK]` there, runs one full forward (the MLM
logits of every position, as bert4keras' `predict`) and draws the new token from the
softmax at the picked position (`torch.multinomial`); n chains are the rows of one
batch; the noise is drawn on the device, so no step waits for the host. Both sides' MLM
logits of the start are compared (`anchor_logits_max_difference`: the same weights).

Targets (issue 30, `gpu_targets`): one chain >= 20x the anchor's steps/s; a step of 100
chains < 5x one chain's.

`--small`: L2/H128/A4 at the same vocabulary, `gibbs_speed.STEPS`' short calls, one repeat.
"""

from __future__ import annotations

import os
import time

import numpy as np

from benchmarks.common import CJK_CONFIG, cjk_vocabulary, median_seconds, run_child, write_random_model
from benchmarks.gibbs_speed import MASK_ID, START, STEPS, load_sampler, time_sampler
from benchmarks.gpu_common import DRIVER, SMALL, CompilePhases, record

GPU_STEPS = 200  # steps a call, either n (under simbert.gibbs.STEP_CHUNK: one call of the loop)
REPEATS = 3
OURS = "ours GibbsSampler float32"
ANCHOR = "PyTorch BertForMaskedLM loop float32 (TF32), the device's anchor"


def start_logits(backbone) -> np.ndarray:
    """Our MLM logits of `START` (1, len, vocab), every segment id 0."""
    import keras

    ids = np.array([START], "int32")
    logits = backbone.mlm_logits(backbone.sequence_output(ids, np.zeros_like(ids)))
    return np.asarray(keras.ops.convert_to_numpy(logits), "float32")


def child_gibbs_ours(directory, n, steps, repeats, logits_path):
    start = time.perf_counter()
    sampler = load_sampler(directory)
    loaded = time.perf_counter()
    phases = CompilePhases()
    report = time_sampler(sampler, n, steps, repeats, around_first=lambda: phases)
    if logits_path:
        np.save(logits_path, start_logits(sampler.backbone))
    return {"load_s": loaded - start, **report, "programs": sampler.compiled_programs, **phases.report("first")}


def child_gibbs_anchor(hf_dir, n, steps, repeats, logits_path):
    """bert4keras' example loop in PyTorch on the device (module docstring)."""
    start = time.perf_counter()
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as JAX's float32
    model = transformers.BertForMaskedLM.from_pretrained(hf_dir, attn_implementation="sdpa").to(device).eval()
    loaded = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.inference_mode():
        token_ids = torch.tensor([START] * n, dtype=torch.long, device=device)
        rows = torch.arange(n, device=device)

        def run():
            for _ in range(steps):
                i = torch.randint(1, len(START) - 1, (n,), device=device, generator=generator)
                token_ids[rows, i] = MASK_ID
                probabilities = torch.softmax(model(input_ids=token_ids).logits[rows, i].float(), dim=-1)
                token_ids[rows, i] = torch.multinomial(probabilities, 1, generator=generator)[:, 0]
            if device == "cuda":
                torch.cuda.synchronize()

        began = time.perf_counter()
        run()
        first = time.perf_counter() - began
        steady = median_seconds(run, repeats, warmup=0)
        if logits_path:
            ids = torch.tensor([START], dtype=torch.long, device=device)
            np.save(logits_path, model(input_ids=ids).logits.float().cpu().numpy())
    return {"load_s": loaded - start, "first_s": first, "steady_s": steady, "device": device,
            "torch": torch.__version__, "transformers": transformers.__version__}


def write_models(work: str, small: bool) -> tuple[str, str]:
    """gibbs_speed's random model (L2/H128/A4 with `small`) in simbert's layout and as
    its `hf` export; kept if already written."""
    from simbert.export import export_hf

    config = {**CJK_CONFIG, **SMALL} if small else CJK_CONFIG
    directory = os.path.join(work, "gibbs_model_small" if small else "gibbs_model")
    hf_dir = os.path.join(directory, "hf")
    if not os.path.isfile(os.path.join(hf_dir, "model.safetensors")):
        model = write_random_model(directory, config)
        export_hf(model, cjk_vocabulary(config["vocab_size"]), hf_dir)
    return directory, hf_dir


def section_gibbs(args, work, token_dict):
    directory, hf_dir = write_models(work, args.small)
    repeats = 1 if args.small else REPEATS
    sides = {"ours": (OURS, "gibbs-ours", directory), "anchor": (ANCHOR, "gibbs-anchor", hf_dir)}
    for n, (_, small_steps) in STEPS.items():
        steps = small_steps if args.small else GPU_STEPS
        logits = {side: os.path.join(work, f"gibbs_logits_{side}.npy") if n == 1 else "-" for side in sides}
        reports = {}
        for side, (label, child, model) in sides.items():
            name = f"{label}, {n} chain{'s' if n > 1 else ''}, fresh process"
            try:
                reports[side] = {"name": name, **run_child(DRIVER, child, model, n, steps, repeats, logits[side])}
            except RuntimeError as error:
                record(work, section="gibbs", name=name, error=f"{name}: {error}"[-3000:])
        compared = {}
        if n == 1 and len(reports) == 2:  # the same weights on both sides
            compared["anchor_logits_max_difference"] = float(
                np.abs(np.load(logits["ours"]) - np.load(logits["anchor"])).max())
        for side, report in reports.items():
            record(work, section="gibbs", implementation=side, chains=n, steps=steps, repeats=repeats,
                   ms_per_step=report["steady_s"] / steps * 1e3, steps_per_second=steps / report["steady_s"],
                   **report, **compared)


def logits_argument(value: str) -> str | None:
    return None if value == "-" else value


CHILDREN = {"gibbs-ours": lambda a: child_gibbs_ours(a[0], int(a[1]), int(a[2]), int(a[3]), logits_argument(a[4])),
            "gibbs-anchor": lambda a: child_gibbs_anchor(a[0], int(a[1]), int(a[2]), int(a[3]),
                                                          logits_argument(a[4]))}
