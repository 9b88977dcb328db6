"""One-GPU benchmark, ours (Keras 3 on JAX) against PyTorch, both in the same run.

    KERAS_BACKEND=jax python -m benchmarks.gpu --data DATA_DIR --work WORK_DIR [--small]
        [--sections train,fit,encode,generate,gibbs,long_texts]

DATA_DIR holds afqmc/train.txt and vocab/chinese_bert_vocab.txt (as ../shared/data).
Each section is a module (its docstring says what it measures); results as JSON lines in
WORK_DIR/results.jsonl; at the end, the targets with the numbers measured and what each
kernel A/B says (`benchmarks.gpu_targets`):

- train (`benchmarks.gpu_train`): one training step at BERT-base, ours float32 and
  mixed_bfloat16 (each kernel choice flipped too) against a PyTorch SimBERT, float32/TF32
  eager and bf16 autocast + torch.compile; the device's bf16 matmul rate.
- fit (`benchmarks.gpu_fit`): `Trainer.fit` on the AFQMC pairs against the pure step rate
  on the same batches.
- encode (`benchmarks.gpu_encode`): AFQMC sentences through an HF directory, first pass
  in fresh processes (empty and warm compilation cache, ...) and second pass, against
  sentence-transformers in bf16; `Kernels.fused_attention` off and on.
- generate (`benchmarks.gpu_generate`): `gen_synonyms(n=100, k=20)`, first call in fresh
  processes and steady state, against the original algorithm in torch bf16; the
  sampler's kernel choices.
- gibbs (`benchmarks.gpu_gibbs`): `GibbsSampler`, 1 and 100 chains, first call in a fresh
  process and steady ms a step, against a PyTorch loop of bert4keras' Gibbs example
  (`BertForMaskedLM`, one full forward a step) on the same weights.
- long_texts (`benchmarks.gpu_long_texts`): `encode` of one text of 1k / 2k / 4k tokens
  (hierarchical positions), float32 and mixed_bfloat16, written attention against
  `keras.ops.dot_product_attention`: ms a call, peak device memory, equal vectors; which
  path inference keeps on the GPU.

`--small` shrinks every size (L2/H128, batch 16, 400 sentences, n=10; long texts of 256 to
1,024 tokens) for a CPU dry run (the PyTorch sides then run on the CPU).
This module is the driver: it also runs the sections' fresh processes (`--child NAME`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from benchmarks import gpu_encode, gpu_fit, gpu_generate, gpu_gibbs, gpu_long_texts, gpu_train
from benchmarks.common import DATA, ROOT, describe_machine, simplified_vocab
from benchmarks.gpu_common import record
from benchmarks.gpu_targets import read_records, report

SECTIONS = {"train": gpu_train.section_train, "fit": gpu_fit.section_fit, "encode": gpu_encode.section_encode,
            "generate": gpu_generate.section_generate, "gibbs": gpu_gibbs.section_gibbs,
            "long_texts": gpu_long_texts.section_long_texts}
CHILDREN = {**gpu_encode.CHILDREN, **gpu_generate.CHILDREN, **gpu_gibbs.CHILDREN, **gpu_long_texts.CHILDREN}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA)
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
