"""KV-cached decoding equals full recomputation, and the original bert4keras decoder."""

import json

import keras
import numpy as np
import pytest

from helpers import TINY_CONFIG, random_bert_values, run_reference
from simbert import Transformer, build_transformer_model
from simbert.checkpoints import write_tf_checkpoint
from simbert.config import BackboneConfig
from simbert.generation import CachedDecoder, blocked_top_k, pick_tokens
from simbert.kernels import Kernels

MODELS = ["bert", "roformer"]
SOURCES = [[2, 11, 12, 13, 3], [2, 40, 41, 42, 43, 44, 45, 46, 3], [2, 90, 3]]
END_ID = 3
MAXLEN = 12


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Random checkpoints whose MLM never favours [PAD], like a trained model's."""
    root = tmp_path_factory.mktemp("generation")
    dirs = {}
    for model in MODELS:
        values = random_bert_values(TINY_CONFIG, model, seed=21)
        values["cls/predictions/output_bias"][0] = -30.0
        (root / model).mkdir()
        (root / model / "bert_config.json").write_text(json.dumps(TINY_CONFIG))
        write_tf_checkpoint(values, str(root / model / "bert_model.ckpt"))
        dirs[model] = str(root / model)
    return dirs


def unilm(model_dirs, model):
    return build_transformer_model(TINY_CONFIG, model_dirs[model], model=model, application="unilm",
                                   with_mlm="linear")


def full_logits(backbone, source, targets, length=2 * MAXLEN):
    """The next-token logits after each target of `targets` (lists of token ids): the
    whole model run, without a cache, on `source + target`, a row each. The rows are
    padded with [PAD] to `length`, one compiled shape for every call (was one per
    sequence length, a compile each on JAX); padding changes no output
    (test_models.test_padding_does_not_change_outputs)."""
    token_ids = np.zeros((len(targets), length), "int32")
    segment_ids = np.zeros((len(targets), length), "int32")
    for row, target in enumerate(targets):
        token_ids[row, :len(source) + len(target)] = source + target
        segment_ids[row, len(source):len(source) + len(target)] = 1
    logits = backbone.predict([token_ids, segment_ids], verbose=0)
    return np.stack([logits[row, len(source) + len(target) - 1] for row, target in enumerate(targets)])


def full_greedy(backbone, source, steps):
    target = []
    for _ in range(steps):
        token = int(np.argmax(full_logits(backbone, source, [target])[0]))
        target.append(token)
        if token == END_ID:
            return target[:-1]
    return target


@pytest.mark.parametrize("model", MODELS)
def test_cached_step_logits_equal_full_recompute(model_dirs, model):
    backbone = unilm(model_dirs, model)
    decoder = CachedDecoder(backbone, END_ID, max_source_len=12, max_target_len=MAXLEN)
    source = SOURCES[1]
    logits, source_caches, source_len = decoder.prefill(source)
    caches = decoder.empty_caches(1)
    target = [17, 5, 96, 33, 60, 8]
    expected = full_logits(backbone, source, [target[:t] for t in range(len(target) + 1)])
    worst = 0.0
    for t, token in enumerate([None] + target):
        if token is not None:
            logits, caches = decoder.step([token], source_caches, caches, source_len, t - 1)
        got = np.asarray(logits)[0]
        worst = max(worst, float(np.abs(got - expected[t]).max()))
    assert worst < 1e-4
    assert np.std(expected[-1]) > 0.1  # the logits carry signal


@pytest.mark.parametrize("model", MODELS)
def test_greedy_equals_full_recompute_greedy(model_dirs, model):
    backbone = unilm(model_dirs, model)
    decoder = CachedDecoder(backbone, END_ID, max_source_len=12, max_target_len=MAXLEN)
    for source in SOURCES:
        expected = full_greedy(backbone, source, MAXLEN)
        assert decoder.sample(source, n=3, topk=1) == [expected] * 3
        assert len(expected) > 0


@pytest.fixture(scope="module")
def bert4keras_decodes(model_dirs, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bert4keras_generation")
    jobs = [{"kind": "generate", "config": f"{model_dirs[m]}/bert_config.json",
             "checkpoint": f"{model_dirs[m]}/bert_model.ckpt", "model": m, "end_id": END_ID,
             "maxlen": MAXLEN, "beam_size": 3, "sources": SOURCES, "output": str(workdir / f"{m}.json")}
            for m in MODELS]
    run_reference(jobs, str(workdir))
    return {m: json.loads((workdir / f"{m}.json").read_text()) for m in MODELS}


def strip_end(ids):
    return ids[: ids.index(END_ID)] if END_ID in ids else ids


@pytest.mark.parametrize("model", MODELS)
def test_greedy_and_beam_search_equal_bert4keras(model_dirs, bert4keras_decodes, model):
    decoder = CachedDecoder(unilm(model_dirs, model), END_ID, max_source_len=12, max_target_len=MAXLEN)
    for source, expected in zip(SOURCES, bert4keras_decodes[model]):
        assert decoder.sample(source, n=1, topk=1) == [strip_end(expected["greedy"])]
        assert decoder.beam_search(source, beam_size=3) == strip_end(expected["beam"])


def test_pick_tokens_matches_the_distribution():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 20000, "float32"))
    uniform = rng.random(20000).astype("float32")
    counts = lambda tokens: np.bincount(np.asarray(tokens), minlength=4) / 20000  # noqa: E731
    np.testing.assert_allclose(counts(pick_tokens(logits, uniform)), [0.5, 0.3, 0.15, 0.05], atol=0.015)
    np.testing.assert_allclose(counts(pick_tokens(logits, uniform, topk=2)), [0.625, 0.375, 0, 0], atol=0.015)
    # top-p 0.7 keeps 0.5 and 0.3 (the prefix whose mass first reaches 0.7).
    np.testing.assert_allclose(counts(pick_tokens(logits, uniform, topp=0.7)), [0.625, 0.375, 0, 0], atol=0.015)
    # Temperature 0.5 squares the probabilities before renormalising.
    squared = np.array([0.25, 0.09, 0.0225, 0.0025]) / 0.365
    np.testing.assert_allclose(counts(pick_tokens(logits, uniform, temperature=0.5)), squared, atol=0.015)
    assert np.asarray(pick_tokens(logits[:3], uniform[:3], topk=1)).tolist() == [0, 0, 0]


def test_samples_stop_at_end_and_are_seeded(model_dirs):
    decoder = CachedDecoder(unilm(model_dirs, "bert"), END_ID, max_source_len=12, max_target_len=MAXLEN)
    first = decoder.sample(SOURCES[0], n=16, topk=5, seed=7)
    assert first == decoder.sample(SOURCES[0], n=16, topk=5, seed=7)
    assert first != decoder.sample(SOURCES[0], n=16, topk=5, seed=8)
    assert all(END_ID not in s and 0 not in s and len(s) <= MAXLEN for s in first)
    # n larger than a chunk: drawn max_rows at a time, the same samples as one batch.
    assert decoder.sample(SOURCES[0], n=16, topk=5, seed=7, max_rows=5) == first
    assert decoder.compiled_programs == 3  # the prefill, the 16-row and the 5-row sampling loops
    with pytest.raises(ValueError, match="max_source_len 12"):
        decoder.sample(list(range(2, 20)), n=1)


def test_blocked_top_k_equals_top_k_ties_included():
    """`blocked_top_k` (the CPU's sampler kernel) gives `ops.top_k`'s values and indices,
    ties to the lower index, -inf columns and block sizes that do not divide the width."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal((7, 1000)).astype("float32")
    values[1, [5, 500, 900]] = 9.0  # ties across blocks
    values[2, ::50] = 3.0
    values[3, :] = 1.0  # every column tied
    values[4, 10:] = -np.inf  # a [PAD]-like row, ten finite columns
    values[5] = np.round(values[5], 1)  # many ties inside blocks
    for k in (1, 3, 5, 8):
        expected_values, expected_indices = keras.ops.top_k(values, k)
        for block in (7, 64, 128):
            top, indices = blocked_top_k(keras.ops.convert_to_tensor(values), k, block)
            np.testing.assert_array_equal(np.asarray(top), np.asarray(expected_values))
            np.testing.assert_array_equal(np.asarray(indices), np.asarray(expected_indices))


def test_sampling_with_blocked_top_k_equals_plain_top_k():
    """A vocabulary of 1500 (wider than 5 blocks of 128): the same samples either way."""
    config = BackboneConfig.from_dict({**TINY_CONFIG, "vocab_size": 1500})
    samples = []
    for blocked in (True, False):
        keras.utils.set_random_seed(4)
        backbone = Transformer(config, application="unilm", with_mlm="linear",
                               kernels=Kernels(blocked_top_k=blocked))
        decoder = CachedDecoder(backbone, END_ID, max_source_len=12, max_target_len=MAXLEN)
        samples.append(decoder.sample(SOURCES[1], n=16, topk=5, seed=3))
    assert samples[0] == samples[1] and len({tuple(s) for s in samples[0]}) > 1


@pytest.fixture(scope="module")
def end_check_decoders():
    """A decoder for each `Kernels.end_check_every` k tried, each of the same random model
    (seed 6). Both end biases of the next test use them: a bias is a weight, so the
    second one runs the programs the first compiled."""
    decoders = {}
    for every in (1, 2, 3, 5, MAXLEN - 1, MAXLEN, 50):
        keras.utils.set_random_seed(6)
        backbone = Transformer(BackboneConfig.from_dict(TINY_CONFIG), application="unilm", with_mlm="linear",
                               kernels=Kernels(end_check_every=every))
        decoders[every] = CachedDecoder(backbone, END_ID, max_source_len=12, max_target_len=MAXLEN)
    return decoders


@pytest.mark.parametrize("end_bias", [0.3, 1.0])
def test_checking_for_ended_samples_less_often_gives_the_same_samples(end_check_decoders, end_bias):
    """`Kernels.end_check_every`: the loop checks whether every sample has ended after
    every k steps; rows that ended pick nothing, so the samples are the same for any k,
    whether some samples run to the limit (bias 0.3) or all end early (bias 1: the loop
    stops before the limit)."""
    samples = {}
    for every, decoder in end_check_decoders.items():
        bias = decoder.backbone.mlm_bias.bias.numpy()
        bias[END_ID] = end_bias
        decoder.backbone.mlm_bias.bias.assign(bias)
        samples[every] = decoder.sample(SOURCES[0], n=24, topk=5, seed=8)
    lengths = [len(sample) for sample in samples[1]]
    assert len(set(lengths)) > 2
    assert (max(lengths) == MAXLEN) if end_bias < 1 else (max(lengths) < MAXLEN - 2)
    assert all(samples[every] == samples[1] for every in samples)
    with pytest.raises(ValueError, match="end_check_every should be a positive integer, got 0"):
        Kernels(end_check_every=0)


def test_large_n_is_sampled_in_chunks_of_one_program(two_models):
    decoder = two_models[0].decoder
    before = decoder.compiled_programs
    samples = decoder.sample([2, 10, 11, 3], n=300, topk=5, seed=0, max_rows=64, max_new_tokens=4)
    assert len(samples) == 300 and decoder.compiled_programs - before <= 2  # the prefill and one 64-row loop
    assert samples[:64] == decoder.sample([2, 10, 11, 3], n=300, topk=5, seed=0, max_new_tokens=4)[:64]


def test_sampling_stops_before_the_next_chunk_once_cancelled(two_models):
    """A server's timeout sets `cancel`: the chunks not yet drawn are not drawn."""
    import threading

    from simbert.generation import SamplingCancelled

    decoder = two_models[0].decoder
    cancel, chunks = threading.Event(), []
    decoder.sample([2, 10, 11, 3], n=64, topk=5, seed=0, max_rows=64, max_new_tokens=4)  # its 64-row sampler
    key = next(key for key in decoder._samplers if key[0] == 64)
    sampler = decoder._samplers[key]

    def cancelling_after_two(*arguments):
        chunks.append(1)
        if len(chunks) == 2:
            cancel.set()
        return sampler(*arguments)

    decoder._samplers[key] = cancelling_after_two
    try:
        with pytest.raises(SamplingCancelled, match="sampling cancelled after 128 of 300 samples"):
            decoder.sample([2, 10, 11, 3], n=300, topk=5, seed=0, max_rows=64, max_new_tokens=4, cancel=cancel)
    finally:
        decoder._samplers[key] = sampler
    assert len(chunks) == 2
    assert len(decoder.sample([2, 10, 11, 3], n=300, topk=5, seed=0, max_rows=64, max_new_tokens=4,
                              cancel=threading.Event())) == 300


def test_cached_steps_past_the_position_table_equal_full_recompute(model_dirs):
    """A BERT of 40 positions with hierarchical_position: a source of 30 tokens and a
    target reaching position 59; every cached step's logits equal a full recompute."""
    backbone = build_transformer_model(TINY_CONFIG, model_dirs["bert"], model="bert", application="unilm",
                                       with_mlm="linear", hierarchical_position=True)
    assert backbone.config.max_length == 1600
    decoder = CachedDecoder(backbone, END_ID, max_source_len=32, max_target_len=32)
    source = [2] + [int(token) for token in np.random.default_rng(8).integers(4, 97, 28)] + [3]
    logits, source_caches, source_len = decoder.prefill(source)
    caches = decoder.empty_caches(1)
    target = [int(token) for token in np.random.default_rng(9).integers(4, 97, 29)]
    expected = full_logits(backbone, source, [target[:t] for t in range(len(target) + 1)], length=64)
    worst = 0.0
    for t, token in enumerate([None] + target):
        if token is not None:
            logits, caches = decoder.step([token], source_caches, caches, source_len, t - 1)
        worst = max(worst, float(np.abs(np.asarray(logits)[0] - expected[t]).max()))
    assert len(source) + len(target) == 59 and worst < 1e-4
    plain = build_transformer_model(TINY_CONFIG, model_dirs["bert"], model="bert", application="unilm",
                                    with_mlm="linear")
    with pytest.raises(ValueError, match="exceeds the model's 40 positions"):
        CachedDecoder(plain, END_ID, max_source_len=32, max_target_len=32)
