"""Runs bert4keras 0.11.5 on jobs described in a JSON file; the tests call it in a
subprocess with TF_KERAS=1 and TF_USE_LEGACY_KERAS=1 (bert4keras needs tf.keras 2).

Job kinds:
  model:    build_transformer_model + load checkpoint + predict on inputs (npz) -> npz
  generate: the original gen_synonyms decoder: greedy random_sample and beam_search
  time_sample: seconds per random_sample call of that decoder (benchmarks/)
  time_gen_synonyms: the original script's gen_synonyms end to end (sample, decode,
              dedupe, encode the candidates, rank): load, first and steady seconds
  time_gibbs: the loop of bert4keras' examples/basic_gibbs_sampling_via_mlm.py (one
              `predict` per step), n chains as the rows of one batch: load, first and
              steady seconds of `steps` steps (benchmarks/)
  time_train: seconds per training step of the original recipe (benchmarks/), under the
              job's tf_keras dtype policy ("precision", float32 by default)
  tokenize: Tokenizer.encode on sentences -> JSON of tokens, ids, segment ids
  decode:   Tokenizer.decode of id sequences (JSON) -> JSON of texts
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
        **({"hierarchical_position": job["hierarchical_position"]} if job.get("hierarchical_position") else {}),
    )
    inputs = np.load(job["inputs"])
    outputs = model.predict([inputs["token_ids"], inputs["segment_ids"]], verbose=0)
    if not isinstance(outputs, list):
        outputs = [outputs]
    np.savez(job["output"], *outputs)


def recompute_decoder(seq2seq, end_id, maxlen):
    """The original SimBERT generator over `seq2seq` (a model giving MLM probabilities):
    the whole sequence is recomputed at every step."""
    from bert4keras.snippets import AutoRegressiveDecoder

    class Generator(AutoRegressiveDecoder):
        @AutoRegressiveDecoder.wraps(default_rtype="probas")
        def predict(self, inputs, output_ids, states):
            token_ids, segment_ids = inputs
            token_ids = np.concatenate([token_ids, output_ids], 1)
            segment_ids = np.concatenate([segment_ids, np.ones_like(output_ids)], 1)
            return self.last_token(seq2seq).predict([token_ids, segment_ids], verbose=0)

    return Generator(start_id=None, end_id=end_id, maxlen=maxlen)


def make_generator(job):
    model = build_transformer_model(job["config"], job["checkpoint"], model=job["model"],
                                    application="unilm", with_mlm=True)
    return recompute_decoder(model, job["end_id"], job["maxlen"])


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


def run_time_gen_synonyms(job):
    """The original SimBERT script's `gen_synonyms(text, n, k)`: one model with the
    linear pooler and the MLM head, `random_sample` (top-k) on its MLM output, decoded,
    deduplicated, then the candidates encoded with the pooler output and ranked by
    cosine against the text. Seconds to build the model, of the first call and the
    median of later ones."""
    import keras
    from bert4keras.snippets import sequence_padding

    start = time.perf_counter()
    tokenizer = Tokenizer(job["vocab"], do_lower_case=True)
    bert = build_transformer_model(job["config"], job["checkpoint"], with_pool="linear", application="unilm",
                                   with_mlm=True, return_keras_model=False)
    encoder = keras.models.Model(bert.model.inputs, bert.model.outputs[0])
    generator = recompute_decoder(keras.models.Model(bert.model.inputs, bert.model.outputs[1]),
                                  tokenizer._token_end_id, job["maxlen"])

    def generate(text, n, topk=5):
        token_ids, segment_ids = tokenizer.encode(text, maxlen=job["maxlen"])
        return [tokenizer.decode(ids) for ids in generator.random_sample([token_ids, segment_ids], n, topk)]

    def gen_synonyms(text, n, k):
        candidates = [i for i in set(generate(text, n)) if i != text]
        candidates = [text] + candidates
        token_ids, segment_ids = [], []
        for candidate in candidates:
            ids, segments = tokenizer.encode(candidate)
            token_ids.append(ids)
            segment_ids.append(segments)
        vectors = encoder.predict([sequence_padding(token_ids), sequence_padding(segment_ids)], verbose=0)
        vectors /= (vectors ** 2).sum(axis=1, keepdims=True) ** 0.5
        order = np.dot(vectors[1:], -vectors[0]).argsort()
        return [candidates[i + 1] for i in order[:k]]

    loaded = time.perf_counter()
    gen_synonyms(job["text"], job["n"], job["k"])
    first = time.perf_counter()
    steady = []
    for _ in range(job["repeats"]):
        began = time.perf_counter()
        gen_synonyms(job["text"], job["n"], job["k"])
        steady.append(time.perf_counter() - began)
    with open(job["output"], "w", encoding="utf-8") as writer:
        json.dump({"load_s": loaded - start, "first_s": first - loaded, "steady_s": float(np.median(steady))}, writer)


def run_time_gibbs(job):
    """bert4keras' examples/basic_gibbs_sampling_via_mlm.py: an MLM model (softmax
    probabilities); each step picks a position per chain uniformly among all but [CLS] and
    [SEP], writes [MASK] there, runs one `predict` and draws the new token with
    `np.random.choice(vocab_size, p=probas)`. The example runs one chain; here `n` chains
    are the rows of the one batch each `predict` sees (the example's decode of every
    sample is left out, as on our side). Seconds to build the model, of the first `steps`
    steps and the median of `repeats` later runs of `steps` steps."""
    start = time.perf_counter()
    model = build_transformer_model(job["config"], job["checkpoint"], model=job["model"], with_mlm=True)
    loaded = time.perf_counter()
    np.random.seed(job["seed"])
    n = job["n"]
    token_ids = np.array([job["start"]] * n)
    segment_ids = np.zeros_like(token_ids)
    length, vocab_size, rows = token_ids.shape[1] - 2, int(model.output.shape[-1]), np.arange(n)

    def run():
        for _ in range(job["steps"]):
            i = np.random.choice(length, n) + 1
            token_ids[rows, i] = job["mask_id"]
            probas = model.predict([token_ids, segment_ids], verbose=0)[rows, i]
            for row in range(n):
                token_ids[row, i[row]] = np.random.choice(vocab_size, p=probas[row])

    run()
    first = time.perf_counter()
    steady = []
    for _ in range(job["repeats"]):
        began = time.perf_counter()
        run()
        steady.append(time.perf_counter() - began)
    with open(job["output"], "w", encoding="utf-8") as writer:
        json.dump({"load_s": loaded - start, "first_s": first - loaded, "steady_s": float(np.median(steady)),
                   "last": token_ids.tolist()}, writer)


def run_time_train(job):
    """Seconds per training step of the original recipe: a bert4keras UniLM model, the
    seq2seq loss on the full MLM output and the in-batch similarity loss written with TF
    ops, tf_keras AdamW, one tf.function step."""
    import tensorflow as tf

    tf.keras.mixed_precision.set_global_policy(job.get("precision", "float32"))
    model = build_transformer_model(job["config"], model="bert", application="unilm",
                                     with_pool="linear", with_mlm="linear")
    optimizer = tf.keras.optimizers.AdamW(learning_rate=1e-5, weight_decay=0.01)
    inputs = np.load(job["inputs"])
    token_ids, segment_ids = tf.constant(inputs["token_ids"]), tf.constant(inputs["segment_ids"])

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            pooled, logits = model([token_ids, segment_ids], training=True)
            pooled, logits = tf.cast(pooled, tf.float32), tf.cast(logits, tf.float32)
            weights = tf.cast(segment_ids[:, 1:], tf.float32)
            cross_entropy = tf.keras.losses.sparse_categorical_crossentropy(
                token_ids[:, 1:], logits[:, :-1], from_logits=True)
            seq2seq = tf.reduce_sum(cross_entropy * weights) / tf.reduce_sum(weights)
            vectors = tf.math.l2_normalize(pooled, axis=1)
            similarities = tf.matmul(vectors, vectors, transpose_b=True)
            similarities = (similarities - tf.eye(tf.shape(vectors)[0]) * 1e12) * job["scale"]
            index = tf.range(tf.shape(vectors)[0])
            labels = index + 1 - index % 2 * 2
            similarity = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                labels, similarities, from_logits=True))
            loss = seq2seq + similarity
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    for _ in range(job["warmup"]):
        step().numpy()
    times = []
    for _ in range(job["steps"]):
        start = time.perf_counter()
        step().numpy()
        times.append(time.perf_counter() - start)
    with open(job["output"], "w", encoding="utf-8") as writer:
        json.dump({"seconds_per_step": float(np.median(times))}, writer)


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


def run_decode(job):
    tokenizer = Tokenizer(job["vocab"], do_lower_case=job["do_lower_case"])
    with open(job["ids"], encoding="utf-8") as reader:
        sequences = json.load(reader)
    with open(job["output"], "w", encoding="utf-8") as writer:
        json.dump([tokenizer.decode(ids) for ids in sequences], writer, ensure_ascii=False)


def run_vocab(job):
    token_dict, keep_tokens = load_vocab(job["vocab"], simplified=True, startswith=job["startswith"])
    with open(job["output"], "w", encoding="utf-8") as writer:
        json.dump([token_dict, keep_tokens], writer, ensure_ascii=False)


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as reader:
        jobs = json.load(reader)
    for job in jobs:
        {"model": run_model, "generate": run_generate, "time_sample": run_time_sample, "time_train": run_time_train,
         "time_gen_synonyms": run_time_gen_synonyms, "time_gibbs": run_time_gibbs,
         "tokenize": run_tokenize, "decode": run_decode, "vocab": run_vocab}[job["kind"]](job)
