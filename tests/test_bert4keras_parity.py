"""Our models against bert4keras 0.11.5 on the same random TF checkpoints."""

import itertools

import numpy as np
import pytest

from helpers import TINY_CONFIG, padded_batch, run_reference, write_model_dir
from simbert import build_transformer_model
from simbert.directories import save_pretrained

KEEP_TOKENS = [0, 1, 2, 3] + [int(i) for i in np.random.default_rng(7).permutation(np.arange(4, 97))[:40]]
HEADS = {"unilm": ("linear", "linear"), "encoder": (True, True)}
CASES = [
    {"model": model, "application": application, "keep": keep}
    for model, application, keep in itertools.product(("bert", "roformer"), ("unilm", "encoder"), (False, True))
]


def case_id(case):
    return f"{case['model']}-{case['application']}-{'keep' if case['keep'] else 'full'}"


@pytest.fixture(scope="module")
def reference(session_dir):
    """bert4keras outputs for every case, plus for checkpoints that we wrote."""
    workdir = session_dir / "bert4keras_parity"
    workdir.mkdir()
    jobs, ours_written = [], {}
    for case in CASES:
        name = case_id(case)
        directory = write_model_dir(str(workdir / case["model"]), TINY_CONFIG, case["model"], seed=1)
        keep = KEEP_TOKENS if case["keep"] else None
        vocab_size = len(KEEP_TOKENS) if keep else TINY_CONFIG["vocab_size"]
        token_ids, segment_ids = padded_batch(vocab_size, seed=3)
        np.savez(workdir / f"{name}.inputs.npz", token_ids=token_ids, segment_ids=segment_ids)
        with_pool, with_mlm = HEADS[case["application"]]
        jobs.append({"kind": "model", "config": f"{directory}/bert_config.json",
                     "checkpoint": f"{directory}/bert_model.ckpt", "model": case["model"],
                     "application": case["application"], "with_pool": with_pool, "with_mlm": with_mlm,
                     "keep_tokens": keep, "inputs": str(workdir / f"{name}.inputs.npz"),
                     "output": str(workdir / f"{name}.npz")})
    for model in ("bert", "roformer"):
        # A model of our own (never loaded) saved in the released layout. Its weights are
        # drawn here, not by the backend's initializers (zero biases, unit gammas): every
        # value shows where it lands, and the checkpoint is the same on TensorFlow and on
        # JAX, so the JAX rerun reuses bert4keras' outputs for it (helpers.run_reference).
        ours = build_transformer_model(TINY_CONFIG, model=model, application="unilm",
                                       with_pool="linear", with_mlm="linear")
        rng = np.random.default_rng(11)
        for variable in ours.trainable_variables:
            variable.assign(rng.normal(0.0, 0.2, variable.shape).astype("float32"))
        directory = str(workdir / f"saved_{model}")
        save_pretrained(ours, directory, {f"t{i}": i for i in range(TINY_CONFIG["vocab_size"])})
        token_ids, segment_ids = padded_batch(TINY_CONFIG["vocab_size"], seed=4)
        np.savez(workdir / f"saved_{model}.inputs.npz", token_ids=token_ids, segment_ids=segment_ids)
        ours_written[model] = ours.predict([token_ids, segment_ids], verbose=0)
        jobs.append({"kind": "model", "config": f"{directory}/bert_config.json",
                     "checkpoint": f"{directory}/bert_model.ckpt", "model": model, "application": "unilm",
                     "with_pool": "linear", "with_mlm": "linear", "keep_tokens": None,
                     "inputs": str(workdir / f"saved_{model}.inputs.npz"),
                     "output": str(workdir / f"saved_{model}.npz")})
    # Hierarchical position decomposition: rows past the 40 learned positions (up to 100).
    token_ids, segment_ids = padded_batch(TINY_CONFIG["vocab_size"], seed=5, length=100)
    np.savez(workdir / "hierarchical.inputs.npz", token_ids=token_ids, segment_ids=segment_ids)
    for alpha in (True, 0.25):
        jobs.append({"kind": "model", "config": f"{workdir}/bert/bert_config.json",
                     "checkpoint": f"{workdir}/bert/bert_model.ckpt", "model": "bert", "application": "unilm",
                     "with_pool": "linear", "with_mlm": "linear", "keep_tokens": None, "hierarchical_position": alpha,
                     "inputs": str(workdir / "hierarchical.inputs.npz"),
                     "output": str(workdir / f"hierarchical_{alpha}.npz")})
    run_reference(jobs, str(workdir))
    return workdir, ours_written


@pytest.mark.parametrize("alpha", [True, 0.25])
def test_hierarchical_positions_past_the_table_match_bert4keras(reference, alpha):
    """bert4keras' `hierarchical_position` on a BERT of 40 positions, rows of up to 100
    tokens: the same pooled vectors and MLM logits at every non-padding position."""
    workdir, _ = reference
    ours = build_transformer_model(str(workdir / "bert" / "bert_config.json"),
                                   str(workdir / "bert" / "bert_model.ckpt"), model="bert", application="unilm",
                                   with_pool="linear", with_mlm="linear", hierarchical_position=alpha)
    inputs = np.load(workdir / "hierarchical.inputs.npz")
    pooled, logits = ours.predict([inputs["token_ids"], inputs["segment_ids"]], verbose=0)
    expected = np.load(workdir / f"hierarchical_{alpha}.npz")
    real = inputs["token_ids"] != 0
    assert real.sum(axis=1).max() == 100 and real[:, 40:].sum() > 60  # positions past the table are used
    np.testing.assert_allclose(pooled, expected["arr_0"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits[real], expected["arr_1"][real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_outputs_match_bert4keras(reference, case):
    workdir, _ = reference
    name = case_id(case)
    with_pool, with_mlm = HEADS[case["application"]]
    ours = build_transformer_model(
        str(workdir / case["model"] / "bert_config.json"), str(workdir / case["model"] / "bert_model.ckpt"),
        model=case["model"], application=case["application"], with_pool=with_pool, with_mlm=with_mlm,
        keep_tokens=KEEP_TOKENS if case["keep"] else None)
    inputs = np.load(workdir / f"{name}.inputs.npz")
    pooled, mlm = ours.predict([inputs["token_ids"], inputs["segment_ids"]], verbose=0)
    expected = np.load(workdir / f"{name}.npz")
    assert mlm.shape[-1] == (len(KEEP_TOKENS) if case["keep"] else TINY_CONFIG["vocab_size"])
    np.testing.assert_allclose(pooled, expected["arr_0"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(mlm, expected["arr_1"], atol=1e-4, rtol=0)
    # The outputs carry signal: padded rows differ from full rows, heads are not constant.
    assert np.std(pooled) > 0.1 and np.std(mlm) > 1e-3


@pytest.mark.parametrize("model", ["bert", "roformer"])
def test_our_saved_checkpoint_loads_in_bert4keras(reference, model):
    workdir, ours_written = reference
    expected = np.load(workdir / f"saved_{model}.npz")
    pooled, logits = ours_written[model]
    np.testing.assert_allclose(expected["arr_0"], pooled, atol=1e-4, rtol=0)
    np.testing.assert_allclose(expected["arr_1"], logits, atol=1e-4, rtol=0)
