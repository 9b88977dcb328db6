"""Runs one timing job of tests/reference/bert4keras_runner.py in a subprocess with
tf.keras 2 (bert4keras cannot share a process with Keras 3) and returns its JSON result."""

import json
import os
import subprocess
import sys

RUNNER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "reference",
                      "bert4keras_runner.py")


def run_job(job: dict, directory: str) -> dict:
    job = {**job, "output": os.path.join(directory, "bert4keras_result.json")}
    jobs_path = os.path.join(directory, "bert4keras_jobs.json")
    with open(jobs_path, "w") as writer:
        json.dump([job], writer)
    env = {**os.environ, "TF_KERAS": "1", "TF_USE_LEGACY_KERAS": "1", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, RUNNER, jobs_path], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(job["output"]) as reader:
        return json.load(reader)
