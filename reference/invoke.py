"""Start bert4keras_runner.py in a subprocess with tf.keras 2 (bert4keras cannot share a
process with Keras 3). Used by the tests and by benchmarks/."""

import json
import os
import subprocess
import sys

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bert4keras_runner.py")


def run_bert4keras(jobs: list[dict], workdir: str) -> None:
    """Run reference jobs (see bert4keras_runner.py) in one subprocess; raise with its
    stderr when it fails."""
    path = os.path.join(workdir, "bert4keras_jobs.json")
    with open(path, "w", encoding="utf-8") as writer:
        json.dump(jobs, writer, ensure_ascii=False)
    env = {**os.environ, "TF_KERAS": "1", "TF_USE_LEGACY_KERAS": "1", "KERAS_BACKEND": "tensorflow",
           "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, RUNNER, path], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"bert4keras runner failed:\n{result.stderr[-4000:]}")


def run_job(job: dict, workdir: str) -> dict:
    """Run one job that writes JSON and return what it wrote."""
    job = {**job, "output": os.path.join(workdir, "bert4keras_result.json")}
    run_bert4keras([job], workdir)
    with open(job["output"], encoding="utf-8") as reader:
        return json.load(reader)
