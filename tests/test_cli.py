"""The simbert command end to end on a tiny trained model; its errors (one line, exit 1 or
the usage error 2, found before the backend starts) and Ctrl-C while it starts."""

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT, backend_loaded, error_lines, shell_environment, simbert, simbert_commands

CORPUS = ["明天北京会下雨吗", "花呗怎么还款", "信用卡怎么提高额度", "手机充不进电怎么办"]


def stdout_of(*args):
    """The stdout of `simbert *args`, which should succeed."""
    result = simbert(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_generate_encode_index_search(trained_tiny, tmp_path):
    corpus, half = tmp_path / "corpus.txt", tmp_path / "new" / "half"
    corpus.write_text("\ufeff" + "\n".join(CORPUS) + "\n\n", encoding="utf-8")
    # The five commands in one process (the backend starts once; each run by the command's
    # main, as `python -m simbert.cli` runs it).
    generated, encoded, encoded_half, indexed, searched = simbert_commands(
        tmp_path,
        ("generate", trained_tiny, "花呗怎么还款", "-n", 30, "-k", 5, "--seed", 1),
        ("encode", trained_tiny, "--input", corpus, "--output", tmp_path / "vectors.npy"),
        # written exactly there (no .npy added), its directory created
        ("encode", trained_tiny, "--input", corpus, "--output", half, "--precision", "mixed_bfloat16"),
        ("index", trained_tiny, "--input", corpus, "--output", tmp_path / "index"),
        ("search", tmp_path / "index", trained_tiny, "花呗怎么还款", "--topn", 2))
    for result in (generated, encoded, encoded_half, indexed, searched):
        assert result.returncode == 0, (result.args[0], result.stderr[-3000:])

    lines = generated.stdout.strip().splitlines()
    assert 0 < len(lines) <= 5
    scores = [float(line.split("\t")[0]) for line in lines]
    assert scores == sorted(scores, reverse=True) and all("花呗怎么还款" != line.split("\t")[1] for line in lines)

    vectors = np.load(tmp_path / "vectors.npy")
    assert vectors.shape[0] == len(CORPUS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert sorted(os.listdir(tmp_path / "new")) == ["half"]
    cosines = np.sum(np.load(half) * vectors, axis=1)
    assert cosines.min() > 0.99 and not np.array_equal(np.load(half), vectors)  # in bfloat16

    best = searched.stdout.splitlines()
    assert len(best) == 2 and best[0].split("\t")[1] == "花呗怎么还款"
    assert abs(float(best[0].split("\t")[0]) - 1) < 1e-4


@pytest.mark.parametrize("command", ["train", "generate", "encode", "index", "search"])
def test_help(command):
    assert "usage: simbert " + command in stdout_of(command, "--help")


def test_version_is_the_installed_one():
    """`simbert --version` names the package's one version, the one pip installed."""
    import simbert as package

    assert stdout_of("--version").strip() == f"simbert {package.__version__}"
    assert package.__version__ == importlib.metadata.version("simbert")



BACKEND_ERROR = ("the Keras backend is 'torch', and simbert runs on TensorFlow or JAX: set KERAS_BACKEND=tensorflow "
                 "(the default install) or KERAS_BACKEND=jax (on a GPU, with pip install -e \".[gpu]\"); "
                 "KERAS_BACKEND, else ~/.keras/keras.json, chooses the backend")


def test_another_keras_backend_is_named_with_how_to_choose_one(trained_tiny, tmp_path, monkeypatch):
    """KERAS_BACKEND=torch (Keras 3 has it; simbert compiles for TensorFlow and JAX):
    `train` stops with one line saying which backends to set, before it writes anything;
    loading a model says the same."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"model: {{pretrained: {trained_tiny}}}\ndata: {{train: {tmp_path / 'none.json'}}}\n"
                      f"output: {{dir: {tmp_path / 'run'}}}\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "simbert.cli", "train", "--config", str(recipe)],
                            capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "torch"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("simbert: error:")]
    assert result.returncode == 1 and errors == [f"simbert: error: {BACKEND_ERROR}"], result.stderr[-2000:]
    assert not (tmp_path / "run").exists()

    import keras

    from simbert import SimBERT

    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(ValueError) as error:
        SimBERT.from_pretrained(trained_tiny)
    assert str(error.value) == BACKEND_ERROR


def test_generate_prints_only_its_results_cold_and_warm(trained_tiny, tmp_path):
    """A first `generate` printed 8-11 lines of TensorFlow's (start-up, cuInit, oneDNN, an
    XLA cache parse error, AOT loader notes); now stdout has the results and stderr nothing,
    with a fresh compilation cache and with the one it filled."""
    for run in ("cold", "warm"):
        result = subprocess.run([sys.executable, "-m", "simbert.cli", "generate", trained_tiny, "花呗怎么还款",
                                 "-n", "8", "-k", "2", "--seed", "1", "--compile-cache", str(tmp_path / "cache")],
                                capture_output=True, text=True, cwd=ROOT, env=shell_environment(), timeout=300)
        assert result.returncode == 0 and result.stderr == "", (run, result.stderr[-3000:])
        assert 0 < len(result.stdout.splitlines()) <= 2
    assert os.listdir(tmp_path / "cache")  # the warm run read programs the cold one wrote


def test_encode_keeps_row_i_for_line_i(trained_tiny, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("花呗怎么还款\n\n信用卡怎么提高额度\n\n", encoding="utf-8")  # a blank line inside, one at the end
    refused = simbert("encode", trained_tiny, "--input", texts, "--output", tmp_path / "v.npy")
    assert refused.returncode == 1 and error_lines(refused.stderr) == [
        f"simbert: error: {texts}: 1 blank line(s) (line 2); vector row i is input line i, so remove them, or pass "
        f"--skip-blank to leave them out and write the line number of each row beside the vectors"]
    assert not (tmp_path / "v.npy").exists()
    done = simbert("encode", trained_tiny, "--input", texts, "--output", tmp_path / "v.npy", "--skip-blank")
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.load(tmp_path / "v.npy").shape[0] == 2
    assert (tmp_path / "v.lines.txt").read_text().split() == ["1", "3"]
    for size in ("-1", "0"):
        bad = simbert("encode", trained_tiny, "--input", texts, "--output", tmp_path / "w.npy", "--batch-size", size)
        assert bad.returncode == 2 and error_lines(bad.stderr) == [
            f"simbert: error: argument --batch-size: --batch-size should be an integer of at least 1, got {size} "
            f"(see simbert encode --help)"]


def test_cli_sampling_arguments_are_usage_errors(trained_tiny):
    for arguments, message in [(("-n", "-1"), "-n should be an integer of at least 1, got -1"),
                               (("--topk", "-1"), "--topk should be"),
                               (("--maxlen", "0"), "--maxlen should be an integer of at least 3, got 0"),
                               (("--temperature", "0"), "--temperature should be a finite number above 0"),
                               (("--topp", "2"), r"--topp should be a number in (0, 1]"),
                               # Checked once the model is read, still a usage error (was exit 1).
                               (("--topk", "100000"), "argument --topk: --topk should be an integer of at least 1 "
                                                      "and at most ")]:
        result = simbert("generate", trained_tiny, "花呗怎么还款", *arguments)
        assert result.returncode == 2 and len(error_lines(result.stderr)) == 1, result.stderr[-2000:]
        assert message in result.stderr


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    result = simbert("generate", tmp_path, "text")  # a directory, but no model in it
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        f"simbert: error: {tmp_path} has no vocab.txt: not a model directory (a released checkpoint, a training "
        "output or a Hugging Face directory)"]
    assert "Traceback" not in result.stderr
    debug = simbert("generate", tmp_path, "text", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    usage = simbert("train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"), "--resume-anyway")
    assert usage.returncode == 2 and error_lines(usage.stderr) == [
        "simbert: error: --resume-anyway goes with --resume (see simbert --help)"]


def test_path_arguments_are_checked_before_anything_loads(tmp_path):
    """A path that does not exist, or a file where a directory is expected (and the
    reverse), is a usage error naming the argument (exit 2), found before the backend is
    started; a relative path names the directory it was looked up from."""
    text_file = tmp_path / "texts.txt"
    text_file.write_text("花呗怎么还款\n", encoding="utf-8")
    missing = tmp_path / "missing"
    cases = [
        (("generate", missing, "text"), f"argument model_dir: model directory {missing} does not exist",
         "generate"),
        (("generate", text_file, "text"), f"argument model_dir: model directory {text_file} is a file; expected a "
                                          "directory", "generate"),
        (("encode", tmp_path, "--input", missing, "--output", tmp_path / "v.npy"),
         f"argument --input: input file {missing} does not exist", "encode"),
        (("search", text_file, tmp_path, "query"),
         f"argument index_dir: index directory {text_file} is a file; expected a directory", "search"),
        (("eval", tmp_path, text_file, missing), f"argument files: pair file {missing} does not exist", "eval"),
        (("train", "--config", tmp_path), f"argument --config: recipe {tmp_path} is a directory; expected a file",
         "train"),
        (("train", "--config", "no_such_recipe.yaml"), f"argument --config: recipe no_such_recipe.yaml does not "
                                                       f"exist (looked up from the current directory {ROOT})",
         "train"),
    ]
    # Output paths: a directory where a file is written and the reverse, or a path under a
    # file (were raw OS errors, some after every text was encoded).
    a_file = text_file / "sub"
    cases += [
        (("encode", tmp_path, "--input", text_file, "--output", tmp_path),
         f"argument --output: output file {tmp_path} is a directory; expected a file to write (choose another "
         f"path)", "encode"),
        (("encode", tmp_path, "--input", text_file, "--output", a_file / "v.npy"),
         f"argument --output: output file {a_file / 'v.npy'} cannot be written: {text_file} is a file, not a "
         f"directory", "encode"),
        (("index", tmp_path, "--input", text_file, "--output", text_file),
         f"argument --output: index directory {text_file} is a file; expected a directory to write (choose "
         f"another path)", "index"),
        (("export", tmp_path, text_file, "--format", "hf"),
         f"argument out: export directory {text_file} is a file; expected a directory to write (choose another "
         f"path)", "export"),
        (("eval", tmp_path, text_file, "--plot", a_file),
         f"argument --plot: plot directory {a_file} cannot be written: {text_file} is a file, not a directory",
         "eval"),
        (("train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"), "--output-dir", text_file),
         f"argument --output-dir: output directory {text_file} is a file; expected a directory to write (choose "
         f"another path)", "train"),
    ]
    for args, message, command in cases:
        result = simbert(*args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        # stderr is that one line: no backend started (TensorFlow and JAX log as they start).
        assert result.stderr == f"simbert: error: {message} (see simbert {command} --help)\n", args


def test_ctrl_c_while_starting_stops_before_training(tmp_path):
    command = [sys.executable, "-m", "simbert.cli", "train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"),
               "--output-dir", str(tmp_path), "--steps", "5000"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120  # until it imports the backend (its handlers are installed before that)
    while time.time() < deadline and process.poll() is None and not backend_loaded(process.pid):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["stopped"] == "requested" and result["step"] == 0


def test_gibbs_command_prints_chain_step_and_text(trained_tiny, capsys):
    from simbert.cli import main

    assert main(["gibbs", trained_tiny, "花呗怎么还款", "-n", "2", "--steps", "6", "--burn-in", "3", "--seed", "0",
                 "--no-compile-cache"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [(chain, step) for chain, step, _ in lines] == [(c, str(s)) for c in "01" for s in (4, 5, 6)]
    for arguments, message in [(["花呗", "--length", "4"], "takes a text to edit or --length L"),
                               (["花呗", "--steps", "3", "--burn-in", "3"], "--burn-in should be below --steps (3)"),
                               (["花呗", "--positions", "a,1"], "--positions should be token positions from 0")]:
        with pytest.raises(SystemExit) as usage:
            main(["gibbs", trained_tiny, *arguments, "--no-compile-cache"])
        assert usage.value.code == 2 and message in capsys.readouterr().err
