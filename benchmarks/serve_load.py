"""A bounded load test of `simbert serve`: the real server on 127.0.0.1, N concurrent
clients, a fixed number of requests (it stops by itself), a mix of /encode, /similar and
/synonyms; then /encode alone with micro-batching on and off.

    python -m benchmarks.serve_load [--clients 16] [--requests 800] [--small] [--soak-rounds R] [--only RUN]

Model: 6 layers, hidden 384, vocabulary 13685, random weights (`--small`: the test's
2-layer model), an index of 10,000 texts. Reports throughput, p50/p95/p99 latency,
errors (should be 0), and the server's resident memory before and after the measured
requests (after a first quarter as many, which brings it to its working set).
"""

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np

from benchmarks.common import CJK_CONFIG, ROOT, cjk_characters, machine_line, random_texts, write_random_model

SMALL = {**CJK_CONFIG, "vocab_size": 2000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 128}
MIX = (("/encode", 0.6), ("/similar", 0.3), ("/synonyms", 0.1))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as reader:
        return next(int(line.split()[1]) for line in reader if line.startswith("VmRSS")) / 1024


def call(port: int, path: str, body=None) -> dict:
    data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


class Server:
    """`simbert serve` in a subprocess, ready once /health answers."""

    def __init__(self, model_dir: str, index_dir: str, batch_wait_ms: float):
        self.port = free_port()
        command = [sys.executable, "-m", "simbert.cli", "serve", model_dir, "--index", index_dir, "--port",
                   str(self.port), "--batch-wait-ms", str(batch_wait_ms), "--no-compile-cache", "--maxlen", "32"]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.perf_counter()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                self.health = call(self.port, "/health")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        self.ready_s = time.perf_counter() - started

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(60)


def load(port: int, clients: int, requests: int, mix, texts: list[str], seed: int) -> dict:
    """`requests` requests from `clients` threads; latency per endpoint and errors."""
    rng = random.Random(seed)
    paths, weights = zip(*mix)
    plan = [(rng.choices(paths, weights)[0], rng.sample(texts, rng.randint(1, 4))) for _ in range(requests)]
    latencies: dict[str, list[float]] = {path: [] for path in paths}
    errors, lock, cursor = [], threading.Lock(), iter(plan)

    def client():
        while True:
            with lock:
                item = next(cursor, None)
            if item is None:
                return
            path, batch = item
            body = {"/encode": {"texts": batch}, "/similar": {"texts": batch, "topn": 10},
                    "/synonyms": {"text": batch[0], "n": 32, "k": 5}}[path]
            began = time.perf_counter()
            try:
                call(port, path, body)
            except Exception as error:  # noqa: BLE001 (counted and reported)
                errors.append(f"{path}: {error}")
                continue
            with lock:
                latencies[path].append(time.perf_counter() - began)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    report = {"requests": requests, "seconds": round(elapsed, 2), "requests_per_s": round(requests / elapsed, 1),
              "errors": len(errors), "first_errors": errors[:3]}
    for path, values in latencies.items():
        if values:
            p50, p95, p99 = np.percentile(np.array(values) * 1000, [50, 95, 99])
            report[path] = {"count": len(values), "p50_ms": round(p50, 1), "p95_ms": round(p95, 1),
                            "p99_ms": round(p99, 1)}
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--small", action="store_true", help="the 2-layer model, for a dry run")
    parser.add_argument("--soak-rounds", type=int, default=0,
                        help="repeat the measured requests this many more times, reporting memory after each")
    parser.add_argument("--only", choices=["mixed", "encode", "encode-unbatched"], help="run one of the three")
    args = parser.parse_args()
    from simbert.api import SimBERT

    print(machine_line(f"; {args.clients} clients, {args.requests} requests"))
    with tempfile.TemporaryDirectory() as work:
        model_dir, index_dir = os.path.join(work, "model"), os.path.join(work, "index")
        config = SMALL if args.small else CJK_CONFIG
        write_random_model(model_dir, config)
        characters = cjk_characters(config["vocab_size"])
        corpus = random_texts(characters, 10_000, seed=0)
        SimBERT.from_pretrained(model_dir, max_tokens=32, compilation_cache=None).write_index(
            iter(corpus), len(corpus), index_dir)
        queries = random_texts(characters, 500, seed=1)
        runs = {"mixed": ("mixed, micro-batching 5 ms", 5.0, MIX),
                "encode": ("/encode only, micro-batching 5 ms", 5.0, (("/encode", 1.0),)),
                "encode-unbatched": ("/encode only, micro-batching off", 0.0, (("/encode", 1.0),))}
        for label, wait_ms, mix in [runs[args.only]] if args.only else runs.values():
            server = Server(model_dir, index_dir, wait_ms)
            load(server.port, args.clients, args.requests // 4, mix, queries, seed=3)  # reach the working set
            before = rss_mb(server.process.pid)
            report = load(server.port, args.clients, args.requests, mix, queries, seed=2)
            rounds = [round(rss_mb(server.process.pid))]
            for extra in range(args.soak_rounds):  # the same load again: does memory keep growing?
                report["errors"] += load(server.port, args.clients, args.requests, mix, queries, seed=4 + extra)[
                    "errors"]
                rounds.append(round(rss_mb(server.process.pid)))
            report["rss_after_each_round_mb"] = rounds
            metrics = call(server.port, "/metrics")
            report.update(label=label, ready_s=round(server.ready_s, 1), rss_before_mb=round(before),
                          rss_after_mb=round(rss_mb(server.process.pid)),
                          texts_per_encode_call=round(metrics["encoded_texts"] / max(metrics["encode_calls"], 1), 1),
                          compiled_after_warm_up=metrics["compiled_programs"] - server.health["warm_up_programs"],
                          exit_code=server.stop())
            print(json.dumps(report, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
