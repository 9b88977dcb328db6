"""Gibbs sampling speed against bert4keras' example loop, same weights, one run.

    python -m benchmarks.gibbs_speed [--small] [--repeats 3]
    KERAS_BACKEND=jax python -m benchmarks.gibbs_speed

Ours: `simbert.gibbs.GibbsSampler.sample` (n chains in one compiled while_loop, noise
drawn on the host). Anchor: the loop of bert4keras' examples/basic_gibbs_sampling_via_mlm.py
(one `predict` per step and `np.random.choice` over the MLM probabilities), its n chains as
the rows of one batch. Each side runs in a fresh process for each n: after the imports,
building the model and reading the checkpoint ("load"), the first call (compiling
included) and the median of later calls, each call `steps` steps of every chain; steps
per second = steps / the steady call.

Model: 6 layers, hidden 384, 12 heads, FFN 1536, vocabulary 13685 (random weights,
written as a TF checkpoint that both sides load). Start: `[CLS]` + 14 `[MASK]` + `[SEP]`
(16 tokens: one length bucket, no padding), every inner position editable.
"""

import argparse
import contextlib
import json
import time
from importlib import metadata

from benchmarks.common import CJK_CONFIG, machine_line, run_child, write_random_model
from reference.invoke import run_job

LENGTH = 14  # [MASK]s between [CLS] and [SEP]
CLS_ID, SEP_ID, MASK_ID = 2, 3, 4  # of `cjk_vocabulary`
START = [CLS_ID] + [MASK_ID] * LENGTH + [SEP_ID]
# chains -> steps a call runs: (default, --small)
STEPS = {1: (100, 20), 100: (10, 2)}


def load_sampler(directory: str):
    """The `GibbsSampler` of a model directory (its tokenizer's [MASK] and special tokens)."""
    from simbert.directories import load_pretrained
    from simbert.gibbs import GibbsSampler

    tokenizer, backbone = load_pretrained(directory)
    return GibbsSampler.from_tokenizer(backbone, tokenizer)


def time_sampler(sampler, n: int, steps: int, repeats: int, around_first=contextlib.nullcontext) -> dict:
    """The first `sample` call of n chains from `START` (`steps` steps each; inside
    `around_first()`) and the median of `repeats` later ones, in seconds."""
    import numpy as np

    began = time.perf_counter()
    with around_first():
        sampler.sample(START, n=n, steps=steps, burn_in=0, seed=0)
    first = time.perf_counter() - began
    steady = []
    for seed in range(1, repeats + 1):
        began = time.perf_counter()
        sampler.sample(START, n=n, steps=steps, burn_in=0, seed=seed)
        steady.append(time.perf_counter() - began)
    return {"first_s": first, "steady_s": float(np.median(steady))}


def child_ours(directory: str, n: int, steps: int, repeats: int) -> dict:
    """In a fresh process, after the imports (as the anchor's figures): load, the first
    `sample` call, the median of later ones."""
    start = time.perf_counter()
    sampler = load_sampler(directory)
    loaded = time.perf_counter()
    return {"load_s": loaded - start, **time_sampler(sampler, n, steps, repeats),
            "programs": sampler.compiled_programs}


def versions() -> str:
    import keras

    backend = keras.backend.backend()
    engine = metadata.version("tensorflow" if backend == "tensorflow" else "jax")
    return (f"simbert on Keras {keras.__version__} / {backend} {engine}; bert4keras "
            f"{metadata.version('bert4keras')} on tf-keras {metadata.version('tf-keras')}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="fewer steps and one repeat: a quick check")
    parser.add_argument("--repeats", type=int, default=3, help="steady calls per side and n (default 3)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        directory, n, steps, repeats = args.child
        print(json.dumps(child_ours(directory, int(n), int(steps), int(repeats))))
        return
    import tempfile

    repeats = 1 if args.small else args.repeats
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        write_random_model(directory, CJK_CONFIG)
        for n, (steps, small_steps) in STEPS.items():
            steps = small_steps if args.small else steps
            ours = run_child("benchmarks.gibbs_speed", directory, n, steps, repeats)
            theirs = run_job({"kind": "time_gibbs", "config": f"{directory}/bert_config.json",
                              "checkpoint": f"{directory}/bert_model.ckpt", "model": "bert", "start": START,
                              "mask_id": MASK_ID, "n": n, "steps": steps, "repeats": repeats, "seed": 0},
                             directory)
            results[n] = (steps, ours, theirs)
    print(machine_line(", CPU only"))
    print(versions())
    print(f"Gibbs sampling, 6L/384H/13685V, {len(START)} tokens ({LENGTH} editable), each side and n in a fresh "
          f"process; a call = `steps` steps of every chain; steady = median of {repeats}")
    print("| chains | implementation | steps a call | load s | first call s | steady call s | steps/s | "
          "chain-steps/s | steady speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, (steps, ours, theirs) in results.items():
        for name, report in (("bert4keras 0.11.5 example loop (one predict a step)", theirs),
                             ("simbert GibbsSampler (one compiled loop)", ours)):
            rate = steps / report["steady_s"]
            print(f"| {n} | {name} | {steps} | {report['load_s']:.2f} | {report['first_s']:.2f} | "
                  f"{report['steady_s']:.3f} | {rate:.1f} | {rate * n:.0f} | "
                  f"{theirs['steady_s'] / report['steady_s']:.1f}x |")
    per_step = {n: ours["steady_s"] / steps for n, (steps, ours, _) in results.items()}
    one, hundred = results[1], results[100]
    speed_up = (one[2]["steady_s"] / one[0]) / per_step[1]
    print(f"one chain: {speed_up:.1f}x bert4keras' steps/s (target >= 20x); 100 chains: a step takes "
          f"{per_step[100] / per_step[1]:.1f}x one chain's (target < 5x); compiled programs: "
          f"{one[1]['programs']} and {hundred[1]['programs']}")


if __name__ == "__main__":
    main()
