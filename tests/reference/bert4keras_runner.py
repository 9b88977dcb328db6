"""Runs bert4keras 0.11.5 on jobs described in a JSON file; the tests call it in a
subprocess with TF_KERAS=1 and TF_USE_LEGACY_KERAS=1 (bert4keras needs tf.keras 2).

Job kinds:
  model:    build_transformer_model + load checkpoint + predict on inputs (npz) -> npz
  generate: the original gen_synonyms decoder: greedy random_sample and beam_search
  time_sample: seconds per random_sample call of that decoder (benchmarks/)
  tokenize: Tokenizer.encode on sentences -> JSON of tokens, ids, segment ids
  vocab:    load_vocab(simplified=True) -> JSON of token dict and keep_tokens
"""

import json
import sys
import time

import numpy as np
from bert4keras.models import build_transformer_model
from bert4keras.tokenizers import Tokenizer, load_vocab


def run_model(job):
    model = build_transformer_model(
        job["config"], job["checkpoint"], model=job["model"], application=job["application"],
        with_pool=job["with_pool"], with_mlm=job["with_mlm"], keep_tokens=job.get("keep_tokens"),
    )
    inputs = np.load(job["inputs"])
    outputs = model.predict([inputs["token_ids"], inputs["segment_ids"]], verbose=0)
    if not isinstance(outputs, list):
        outputs = [outputs]
    np.savez(job["output"], *outputs)


def make_generator(job):
    """The original SimBERT generator: the whole sequence is recomputed at every step."""
    from bert4keras.snippets import AutoRegressiveDecoder

    model = build_transformer_model(job["config"], job["checkpoint"], model=job["model"],
                                    application="unilm", with_mlm=True)

    class Generator(AutoRegressiveDecoder):
        @AutoRegressiveDecoder.wraps(default_rtype="probas")
        def predict(self, inputs, output_ids, states):
            token_ids, segment_ids = inputs
            token_ids = np.concatenate([token_ids, output_ids], 1)
            segment_ids = np.concatenate([segment_ids, np.ones_like(output_ids)], 1)
            return self.last_token(model).predict([token_ids, segment_ids], verbose=0)

    return Generator(start_id=None, end_id=job["end_id"], maxlen=job["maxlen"])


def run_time_sample(job):
    """Seconds per `random_sample(source, n, topk)` call (after one warm-up call)."""
    generator = make_generator(job)
    inputs = [job["source"], [0] * len(job["source"])]
    generator.random_sample(inputs, job["n"], topk=job["topk"])
    times, lengths = [], []
    for _ in range(job["repeats"]):
        start = time.perf_counter()
        samples = generator.random_sample(inputs, job["n"], topk=job["topk"])
        times.append(time.perf_counter() - start)
        lengths.append(float(np.mean([len(s) for s in samples])))
    with open(job["output"], "w", encoding="utf-8") as writer:
        json.dump({"seconds": times, "mean_length": lengths}, writer)


def run_generate(job):
    """Greedy `random_sample(topk=1)` and `beam_search` of the original generator."""
    generator = make_generator(job)
    results = []
    for source in job["sources"]:
        inputs = [source, [0] * len(source)]
        greedy = generator.random_sample(inputs, 1, topk=1)[0]
        beam = generator.beam_search(inputs, topk=job["beam_size"])
        results.append({"greedy": [int(t) for t in greedy], "beam": [int(t) for t in beam]})
    with open(job["output"], "w", encoding="utf-8") as writer:
        json.dump(results, writer)


def run_tokenize(job):
    pre_tokenize = None
    if job.get("jieba"):
        import jieba

        pre_tokenize = lambda text: jieba.cut(text, HMM=False)  # noqa: E731
    tokenizer = Tokenizer(job["vocab"], do_lower_case=job["do_lower_case"], pre_tokenize=pre_tokenize)
    with open(job["sentences"], encoding="utf-8") as reader:
        cases = json.load(reader)
    results = []
    for first, second, maxlen in cases:
        tokens = tokenizer.tokenize(first)
        ids, segments = tokenizer.encode(first, second, maxlen=maxlen)
        results.append([tokens, ids, segments, tokenizer.decode(ids), tokenizer.rematch(first, tokens)])
    with open(job["output"], "w", encoding="utf-8") as writer:
        json.dump(results, writer, ensure_ascii=False)


def run_vocab(job):
    token_dict, keep_tokens = load_vocab(job["vocab"], simplified=True, startswith=job["startswith"])
    with open(job["output"], "w", encoding="utf-8") as writer:
        json.dump([token_dict, keep_tokens], writer, ensure_ascii=False)


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as reader:
        jobs = json.load(reader)
    for job in jobs:
        {"model": run_model, "generate": run_generate, "time_sample": run_time_sample,
         "tokenize": run_tokenize, "vocab": run_vocab}[job["kind"]](job)
