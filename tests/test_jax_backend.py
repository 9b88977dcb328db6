"""The model, loss, optimizer, parity and generation tests, and the served paths' compiled
shapes, again under KERAS_BACKEND=jax (the backend is fixed at import, so they run in a
subprocess)."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_TESTS = ["test_compiled_training.py::test_training_step_is_compiled_with_a_bounded_number_of_programs",
               "test_compiled_training.py::test_a_checkpoint_between_logged_steps_holds_that_steps_weights",
               "test_compiled_training.py::test_on_jax_the_loss_is_read_off_the_training_loop",
               "test_compiled_training.py::test_batch_ends_run_in_order_behind_the_loop_and_their_errors_reach_it",
               # The failing callback run off the loop (DispatchAhead's worker, JAX only); the
               # one on the loop's thread stops the workers as on TensorFlow, from the same
               # raise in the loop.
               "test_compiled_training.py::test_batch_workers_stop_when_fit_fails[True]",
               "test_models.py", "test_losses.py", "test_optimizers.py", "test_bert4keras_parity.py", "test_shapes.py",
               "test_hf_parity.py", "test_generation.py", "test_source_pass.py",
               "test_server.py::test_no_request_pays_a_compile",
               "test_trace_store.py::test_a_program_that_cannot_be_exported_runs_without_storing",
               "test_api.py::test_loading_and_encoding_leave_the_process_settings_alone",
               "test_api.py::test_the_compilation_cache_is_one_explicit_call",
               "test_cached_step.py::test_cached_gradients_equal_the_plain_step",
               "test_cached_step.py::test_dropout_masks_agree_between_the_passes",
               "test_cached_step.py::test_a_training_step_logs_and_updates_as_the_plain_one",
               "test_gibbs.py::test_chains_equal_a_step_by_step_numpy_loop",
               "test_gibbs.py::test_the_same_seed_gives_the_same_samples_on_both_backends",
               "test_gibbs.py::test_compiled_programs_are_one_per_bucket",
               "test_pair_classifier.py::test_predict_compiles_a_bounded_number_of_programs"]


def test_model_tests_pass_on_jax(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "jax", "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "--basetemp", str(tmp_path),
         *[os.path.join(HERE, name) for name in MODEL_TESTS]],
        env=env, capture_output=True, text=True, cwd=HERE)
    assert result.returncode == 0, result.stdout[-6000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout
