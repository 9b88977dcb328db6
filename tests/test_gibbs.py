"""Gibbs sampling with the MLM head (simbert.gibbs): the compiled chains equal a
step-by-step numpy loop with the same noise, run by an encoder model (so the UniLM
model read with segment ids 0 attends both ways); what may change and what may not;
seeds; a bounded number of compiled programs; argument errors."""

import hashlib

import numpy as np
import pytest

from helpers import TINY_CONFIG, write_model_dir
from simbert import build_transformer_model
from simbert.gibbs import STEP_CHUNK, GibbsSampler, pick_masked_tokens
from simbert.tokenizer import Tokenizer

MODELS = ["bert", "roformer"]
MASK_ID = 4  # in helpers' vocabulary: [PAD] [UNK] [CLS] [SEP] [MASK] w0 w1 ...
START = [2, 17, 30, 8, 61, 44, 3]
SPECIAL = [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gibbs")
    return {model: write_model_dir(str(root / model), TINY_CONFIG, model=model, seed=7) for model in MODELS}


@pytest.fixture(scope="module")
def samplers(model_dirs):
    """A sampler on the UniLM model (pooler and MLM head, as SimBERT loads it) of each kind."""
    result = {}
    for model, directory in model_dirs.items():
        backbone = build_transformer_model(TINY_CONFIG, directory, model=model, application="unilm",
                                           with_pool="linear", with_mlm="linear")
        result[model] = GibbsSampler.from_tokenizer(backbone, Tokenizer(f"{directory}/vocab.txt"))
    return result


def reference_samples(encoder, start, n, steps, burn_in, seed, topk=None, temperature=1.0, positions=None):
    """The algorithm step by step in numpy: each step one forward pass of the chains'
    whole sequences through `encoder` (bidirectional attention, MLM logits at every
    position), then masking, softmax, top-k and inverse CDF in float64, with the noise
    drawn as the module docstring says."""
    editable = np.arange(1, len(start) - 1) if positions is None else np.array(sorted(positions)) + 1
    position_rng, uniform_rng = np.random.default_rng(seed).spawn(2)
    chosen = editable[position_rng.integers(0, len(editable), (steps, n))]
    uniform = uniform_rng.random((steps, n), dtype="float32")
    chains = np.tile(np.array(start, "int32"), (n, 1))
    rows = np.arange(n)
    samples = []
    for step in range(steps):
        masked = chains.copy()
        masked[rows, chosen[step]] = MASK_ID
        logits = np.asarray(encoder([masked, np.zeros_like(masked)]), "float64")[rows, chosen[step]]
        for row in range(n):
            scores = logits[row] / temperature
            scores[SPECIAL] = -np.inf
            order = np.argsort(-scores, kind="stable")[:topk] if topk else np.arange(len(scores))
            probabilities = np.exp(scores[order] - scores[order].max())
            cumulative = np.cumsum(probabilities / probabilities.sum())
            choice = int(np.sum(cumulative <= uniform[step, row] * cumulative[-1]))
            choice = min(choice, int(np.flatnonzero(probabilities > 0)[-1]))
            chains[row, chosen[step, row]] = order[choice]
        if step >= burn_in:
            samples.append(chains.copy())
    return np.stack(samples, axis=1)


@pytest.mark.parametrize("model, case", [
    ("bert", dict(n=3, steps=24, burn_in=4, seed=0)),
    ("roformer", dict(n=2, steps=16, burn_in=0, seed=5, topk=6, temperature=0.7, positions=[1, 3, 4])),
])
def test_chains_equal_a_step_by_step_numpy_loop(model_dirs, samplers, model, case):
    encoder = build_transformer_model(TINY_CONFIG, model_dirs[model], model=model, application="encoder",
                                      with_mlm="linear")
    got = samplers[model].sample(START, **case)
    expected = reference_samples(encoder, START, **case)
    assert got.shape == expected.shape == (case["n"], case["steps"] - case["burn_in"], len(START))
    np.testing.assert_array_equal(got, expected)
    assert len({tuple(chain) for chain in got.reshape(-1, len(START))}) > case["n"]  # the chains moved


# sha256 (first 16 hex digits) of the int32 samples of `sample(START, n=3, steps=40,
# burn_in=0, seed=2024, topk=10, temperature=0.9)` and their last step, the same on
# TensorFlow and on JAX (tests/test_jax_backend.py runs this test again under JAX).
BOTH_BACKENDS = {
    "bert": ("7d1fb885ad5dec0b", [[2, 42, 42, 23, 23, 42, 3], [2, 23, 95, 64, 79, 15, 3], [2, 56, 23, 23, 79, 64, 3]]),
    "roformer": ("7f5fec3cb4912e4d",
                 [[2, 45, 89, 11, 11, 89, 3], [2, 11, 40, 89, 69, 45, 3], [2, 45, 11, 11, 45, 40, 3]]),
}


@pytest.mark.parametrize("model", MODELS)
def test_the_same_seed_gives_the_same_samples_on_both_backends(samplers, model):
    samples = samplers[model].sample(START, n=3, steps=40, burn_in=0, seed=2024, topk=10, temperature=0.9)
    digest, last = BOTH_BACKENDS[model]
    assert samples[:, -1].tolist() == last
    assert hashlib.sha256(np.ascontiguousarray(samples, "int32").tobytes()).hexdigest()[:16] == digest


def test_a_masked_start_fills_every_position_and_keeps_the_frame(samplers):
    start = [2] + [MASK_ID] * 9 + [3]
    samples = samplers["bert"].sample(start, n=4, steps=100, burn_in=10, seed=3)
    assert samples.shape == (4, 90, 11)
    assert (samples[..., 0] == 2).all() and (samples[..., -1] == 3).all()
    inner = samples[..., 1:-1]
    assert not np.isin(inner[inner != MASK_ID], SPECIAL).any()  # no special token is ever written
    assert (inner[:, -1] != MASK_ID).all()  # every [MASK] rewritten by now


def test_positions_restrict_what_changes(samplers):
    samples = samplers["bert"].sample(START, n=3, steps=30, burn_in=0, positions=[0, 4], seed=1)
    fixed = [0, 2, 3, 4, 6]  # positions count the text's tokens: 0 and 4 are ids 1 and 5
    assert (samples[..., fixed] == np.array(START)[fixed]).all()
    assert (samples[..., [1, 5]] != np.array(START)[[1, 5]]).any()


def test_seeded_runs_repeat_and_seeds_differ(samplers):
    sampler = samplers["roformer"]
    first = sampler.sample(START, n=3, steps=20, burn_in=5, seed=11, topk=8)
    np.testing.assert_array_equal(sampler.sample(START, n=3, steps=20, burn_in=5, seed=11, topk=8), first)
    assert (sampler.sample(START, n=3, steps=20, burn_in=5, seed=12, topk=8) != first).any()


def test_chunks_of_rows_and_of_steps_change_nothing(samplers, model_dirs):
    """Chains in turns of 2 rows (the last padded) and a run longer than one compiled call
    give the samples of one call: a longer run's first steps are the shorter run's."""
    backbone = samplers["bert"].backbone
    narrow = GibbsSampler.from_tokenizer(backbone, Tokenizer(f"{model_dirs['bert']}/vocab.txt"), max_rows=2)
    whole = samplers["bert"].sample(START, n=5, steps=20, burn_in=0, seed=4)
    np.testing.assert_array_equal(narrow.sample(START, n=5, steps=20, burn_in=0, seed=4), whole)
    long = samplers["bert"].sample(START, n=5, steps=STEP_CHUNK + 9, burn_in=0, seed=4)
    np.testing.assert_array_equal(long[:, :20], whole)
    assert (long[..., [0, -1]] == [2, 3]).all()


def test_compiled_programs_are_one_per_bucket(model_dirs):
    """Texts of 3 to 16 tokens share the length bucket 16; n = 1, 3, 4 chains the row
    buckets 1 and 4; a longer text takes the bucket 32; steps, seeds, temperature and
    positions compile nothing new; a new topk is a new loop."""
    backbone = build_transformer_model(TINY_CONFIG, model_dirs["bert"], application="unilm", with_mlm="linear")
    sampler = GibbsSampler(backbone, MASK_ID, SPECIAL)
    for length in (3, 7, 16):
        for n in (1, 3, 4):
            start = [2] + [MASK_ID] * (length - 2) + [3]
            sampler.sample(start, n=n, steps=3 + n, burn_in=0, seed=n, temperature=0.5 + n,
                           positions=[0] if n == 3 else None)
    assert sampler.compiled_programs == 2
    sampler.sample([2] + [MASK_ID] * 18 + [3], n=1, steps=2, burn_in=0)
    assert sampler.compiled_programs == 3
    sampler.sample(START, n=1, steps=2, burn_in=0, topk=3)
    assert sampler.compiled_programs == 4


def test_pick_masked_tokens_never_picks_an_excluded_token():
    """A threshold at the very top of the distribution, which rounding can put at the total,
    still picks the last allowed token, not an excluded one after it."""
    logits = np.array([[-1e30, 0.0, 1.0, -1e30, -1e30]] * 2, "float32")
    uniform = np.array([np.nextafter(np.float32(1), np.float32(0)), 1.0], "float32")
    assert np.asarray(pick_masked_tokens(logits, uniform)).tolist() == [2, 2]
    assert np.asarray(pick_masked_tokens(logits, uniform, topk=4)).tolist() == [1, 1]
    assert np.asarray(pick_masked_tokens(logits, np.zeros(2, "float32"), topk=2)).tolist() == [2, 2]


@pytest.mark.parametrize("arguments, message", [
    (dict(n=0), "n should be an integer of at least 1"),
    (dict(steps=0), "steps should be an integer of at least 1"),
    (dict(steps=5, burn_in=5), "burn_in should be an integer of at least 0 and at most 4"),
    (dict(burn_in=-1), "burn_in should be"),
    (dict(topk=93), "topk should be an integer of at least 1 and at most 92"),
    (dict(temperature=0.0), "temperature should be a finite number above 0"),
    (dict(seed=-1), "seed should be an integer of at least 0"),
    (dict(positions=[-1, 2]), "positions should be an integer of at least 0 and at most 4, got -1"),
    (dict(positions=[5]), "positions should be an integer of at least 0 and at most 4, got 5"),
    (dict(positions=[]), "positions is empty"),
    (dict(positions=[2, 2]), "positions holds a position twice"),
    (dict(positions=3), "positions should be a sequence of integers"),
])
def test_arguments_are_checked_naming_them(samplers, arguments, message):
    with pytest.raises(ValueError, match=message):
        samplers["bert"].sample(START, **arguments)


def test_starts_and_vocabularies_are_checked(samplers, model_dirs):
    sampler = samplers["bert"]
    with pytest.raises(ValueError, match=r"token_ids hold \[PAD\] \(id 0\) at \[2\]"):
        sampler.sample([2, 5, 0, 3])
    with pytest.raises(ValueError, match="at least one token"):
        sampler.sample([2, 3])
    with pytest.raises(ValueError, match="expected 0 <= id < 97"):
        sampler.sample([2, 97, 3])
    with pytest.raises(ValueError, match="more than the longest sequence, 40"):
        sampler.sample([2] + [5] * 40 + [3])
    tokens = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "w0"])}
    with pytest.raises(ValueError, match=r"no \[MASK\] token"):
        GibbsSampler.from_tokenizer(sampler.backbone, Tokenizer(tokens))
    with pytest.raises(ValueError, match="exclude all 97 tokens"):
        GibbsSampler(sampler.backbone, MASK_ID, range(97))
    encoder = build_transformer_model(TINY_CONFIG, model_dirs["bert"], application="encoder")
    with pytest.raises(ValueError, match="with_mlm"):
        GibbsSampler(encoder, MASK_ID)
