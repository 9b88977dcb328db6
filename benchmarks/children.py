"""Measurements that need a fresh process: a benchmark module runs itself with `--child`
and reads back the JSON report its child prints last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_child(module: str, *arguments) -> dict:
    """`python -m module --child arguments...` from the repository root; its last stdout
    line as JSON, with `process_s` (the whole process, start-up included)."""
    command = [sys.executable, "-m", module, "--child", *map(str, arguments)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["process_s"] = time.perf_counter() - started
    return report
