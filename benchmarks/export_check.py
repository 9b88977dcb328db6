"""Every export format of one model checked against the model itself, with timings.

    python -m benchmarks.export_check [--texts 512]

Model: 6 layers, hidden 384, vocabulary 13685, random weights (BERT). For each format:
the time to export, the largest difference of its vectors (or hidden states and MLM
logits, for transformers) from ours on the same texts, and for the encoders the time to
encode `--texts` texts of 4-30 characters in batches of 64 against `SimBERT.encode`.
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np

from benchmarks.common import CJK_CONFIG, cjk_characters, machine_line, random_texts, write_random_model
from simbert.api import SimBERT
from simbert.export import export_model


def padded(model: SimBERT, texts: list[str]) -> np.ndarray:
    rows = [model.tokenizer.encode(text, maxlen=model.max_tokens)[0] for text in texts]
    token_ids = np.zeros((len(rows), max(map(len, rows))), "int32")
    for i, row in enumerate(rows):
        token_ids[i, :len(row)] = row
    return token_ids


def batched_seconds(run, model: SimBERT, texts: list[str]) -> tuple[np.ndarray, float]:
    """`run(token_ids)` over batches of 64 texts sorted by length, as `encode` batches."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    outputs = np.zeros((len(texts), model.backbone.config.hidden_size), "float32")
    started = time.perf_counter()
    for start in range(0, len(texts), 64):
        batch = order[start:start + 64]
        outputs[batch] = run(padded(model, [texts[i] for i in batch]))
    return outputs, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=512)
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory() as work:
        model_dir = os.path.join(work, "model")
        write_random_model(model_dir, CJK_CONFIG)
        texts = random_texts(cjk_characters(CJK_CONFIG["vocab_size"]), args.texts, seed=0)
        model = SimBERT.from_pretrained(model_dir, max_tokens=32, compilation_cache=None)
        model.encode(texts[:64], normalize=False)
        started = time.perf_counter()
        ours = model.encode(texts, normalize=False)
        rows = [{"format": "SimBERT.encode (reference)", "encode_s": round(time.perf_counter() - started, 3)}]
        for format in ("saved_model", "onnx", "hf", "bert4keras"):
            out = os.path.join(work, format)
            started = time.perf_counter()
            export_model(model_dir, out, format)
            row = {"format": format, "export_s": round(time.perf_counter() - started, 1)}
            if format == "saved_model":
                import tensorflow as tf

                loaded = tf.saved_model.load(out)  # kept: its variables live as long as it does
                def run(ids, loaded=loaded):
                    return loaded.serve([tf.constant(ids), tf.constant(np.zeros_like(ids))]).numpy()
            elif format == "onnx":
                import onnxruntime

                session = onnxruntime.InferenceSession(os.path.join(out, "model.onnx"))
                run = lambda ids, session=session: session.run(None, {"token_ids": ids, "segment_ids": np.zeros_like(ids)})[0]  # noqa: E731,E501
            elif format == "hf":
                import torch
                import transformers

                masked = transformers.BertForMaskedLM.from_pretrained(out).eval()
                base = transformers.BertModel.from_pretrained(out).eval()
                ids = padded(model, texts[:64])
                inputs = dict(input_ids=torch.tensor(ids, dtype=torch.long),
                              attention_mask=torch.tensor(ids != 0, dtype=torch.long))
                with torch.no_grad():  # SimBERT's pooler is linear: transformers' dense, without its tanh
                    pooled = base.pooler.dense(base(**inputs).last_hidden_state[:, 0]).numpy()
                    logits = masked(**inputs).logits.numpy()
                segments = np.zeros_like(ids)
                ours_logits = np.asarray(model.backbone.mlm_logits(model.backbone.sequence_output(ids, segments)))
                mask = ids != 0  # compare defined positions only
                row.update(max_abs_diff_pooled=float(np.abs(pooled - model.encode(texts[:64], normalize=False)).max()),
                           max_abs_diff_mlm_logits=float(np.abs(logits - ours_logits)[mask].max()))
                rows.append(row)
                continue
            else:
                again = SimBERT.from_pretrained(out, max_tokens=32, compilation_cache=None)
                row.update(max_abs_diff=float(np.abs(again.encode(texts, normalize=False) - ours).max()))
                rows.append(row)
                continue
            vectors, seconds = batched_seconds(run, model, texts)
            row.update(max_abs_diff=float(np.abs(vectors - ours).max()), encode_s=round(seconds, 3))
            rows.append(row)
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
