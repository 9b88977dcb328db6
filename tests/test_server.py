"""`simbert serve`: every endpoint and every refusal through FastAPI's TestClient, the
micro-batcher, no compile after the warm-up, and the real server over HTTP."""

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from fastapi.testclient import TestClient

from helpers import ROOT, TINY_CONFIG, write_model_dir
from simbert.api import SimBERT
from simbert.server import MicroBatcher, ServerLimits, create_app, sample_rows

TEXTS = ["w10 w11 w12", "w20 w21", "w30 w31 w32 w33", "w40"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    directory = write_model_dir(str(tmp_path_factory.mktemp("served") / "model"), TINY_CONFIG)
    return SimBERT.from_pretrained(directory, max_tokens=16, compilation_cache=None)


@pytest.fixture(scope="module")
def client(model):
    model.build_index(TEXTS)
    with TestClient(create_app(model, limits=ServerLimits(max_texts=8, max_chars=40, max_n=200, max_k=10),
                               max_batch=8)) as client:
        yield client
    model.index = None


def test_health_and_metrics(client, model):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["dimension"] == 18 and health["index_size"] == len(TEXTS)
    assert health["fingerprint"] == model.fingerprint and health["backend"] in ("tensorflow", "jax")
    # At least the five sampling loops (build_index may have compiled the source pass).
    assert health["warm_up_programs"] >= len([8, 16, 32, 64, 128])
    before = client.get("/metrics").json()
    client.post("/encode", json={"texts": ["w10"]})
    after = client.get("/metrics").json()
    assert after["requests"]["/encode"] == before["requests"].get("/encode", 0) + 1
    assert after["encoded_texts"] == before["encoded_texts"] + 1


def test_encode_gives_the_models_vectors(client, model):
    response = client.post("/encode", json={"texts": TEXTS}).json()
    assert response["dim"] == 18
    np.testing.assert_allclose(np.array(response["vectors"]), model.encode(TEXTS), atol=1e-5)


def test_similar_finds_each_text_first(client):
    results = client.post("/similar", json={"texts": TEXTS[:2], "topn": 3}).json()["results"]
    assert [row[0][0] for row in results] == TEXTS[:2] and all(len(row) == 3 for row in results)
    assert abs(results[0][0][1] - 1.0) < 1e-4


def test_synonyms_are_the_models(client, model):
    results = client.post("/synonyms", json={"text": "w10 w11 w12", "n": 20, "k": 5, "seed": 3}).json()["results"]
    expected = model.gen_synonyms("w10 w11 w12", n=20, k=5, with_scores=True, seed=3, rows=sample_rows(20))
    assert [text for text, _ in results] == [text for text, _ in expected]
    np.testing.assert_allclose([s for _, s in results], [s for _, s in expected], atol=1e-5)


def test_no_request_pays_a_compile(client):
    compiled = client.get("/metrics").json()["compiled_programs"]
    for texts in (TEXTS, TEXTS[:1] * 7, ["w1 " * 12]):
        assert client.post("/encode", json={"texts": texts}).status_code == 200
    for n in (1, 9, 100, 150):
        assert client.post("/synonyms", json={"text": "w10 w11", "n": n, "k": 3}).status_code == 200
    assert client.get("/metrics").json()["compiled_programs"] == compiled


@pytest.mark.parametrize("path, body, status, field, message", [
    ("/encode", {"texts": ["w1"] * 9}, 413, "texts", "texts holds 9 texts; the limit is 8 a request"),
    ("/encode", {"texts": ["w1", "w" * 41]}, 413, "texts[1]", "texts[1] has 41 characters; the limit is 40"),
    ("/encode", {"texts": []}, 422, "texts", "texts is empty"),
    ("/encode", {"texts": ["w1", " \u200b"]}, 422, "texts[1]", "has no token once cleaned"),
    ("/similar", {"texts": ["w1"], "topn": 11}, 422, "topn", "topn should be an integer of at least 1 and at most 10"),
    ("/synonyms", {"text": "w1", "n": 201}, 422, "n", "n should be an integer of at least 1 and at most 200"),
    ("/synonyms", {"text": "w1", "k": 0}, 422, "k", "k should be an integer of at least 1"),
    ("/synonyms", {"text": ""}, 422, "text", "has no token once cleaned"),
    ("/synonyms", {"text": "w1", "k": 3, "seed": -1}, 422, "seed", "seed should be an integer of at least 0, got -1"),
])
def test_refusals_name_the_field_and_the_limit(client, path, body, status, field, message):
    response = client.post(path, json=body)
    assert response.status_code == status
    assert response.json()["field"] == field and message in response.json()["detail"]


def test_non_string_texts_are_refused(client):
    response = client.post("/encode", json={"texts": ["w1", 3]})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "texts", 1]


@pytest.mark.parametrize("path, body, field", [
    ("/similar", {"texts": ["w1"], "top_n": 3}, "top_n"),
    ("/synonyms", {"text": "w1", "n": 4, "topk": 3}, "topk"),
    ("/encode", {"texts": ["w1"], "normalize": False}, "normalize"),
])
def test_unknown_fields_are_refused_not_ignored(client, path, body, field):
    response = client.post(path, json=body)
    assert response.status_code == 422
    assert [(error["type"], error["loc"]) for error in response.json()["detail"]] == [
        ("extra_forbidden", ["body", field])]


def test_similar_without_an_index_names_the_option(model):
    index, model.index = model.index, None
    try:
        with TestClient(create_app(model, warm_up=False)) as client:
            response = client.post("/similar", json={"texts": ["w1"]})
    finally:
        model.index = index
    assert response.status_code == 409 and "--index INDEX_DIR" in response.json()["detail"]


def test_a_slow_request_times_out(model):
    with TestClient(create_app(model, limits=ServerLimits(request_timeout_s=0.001), warm_up=False)) as client:
        response = client.post("/synonyms", json={"text": "w10 w11", "n": 128})
    assert response.status_code == 504 and "longer than 0.001 s" in response.json()["detail"]


def test_the_micro_batcher_gathers_concurrent_requests():
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.array([[float(text)] for text in texts])

    async def scenario(wait_ms):
        async def run(function):
            return function()

        batcher = MicroBatcher(encode, run, wait_ms=wait_ms, max_texts=100)
        batcher.start()
        requests = [[str(10 * i + j) for j in range(i + 1)] for i in range(5)]
        results = await asyncio.gather(*(batcher.encode(texts) for texts in requests))
        await batcher.stop()
        return requests, results, batcher.batches

    requests, results, batches = asyncio.run(scenario(50))
    assert batches == 1 and calls == [[text for texts in requests for text in texts]]
    for texts, vectors in zip(requests, results):  # each request gets its own rows back
        assert vectors[:, 0].tolist() == [float(text) for text in texts]
    calls.clear()
    _, _, batches = asyncio.run(scenario(0))
    assert batches == 5 and len(calls) == 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(port, path, body):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as response:
        return json.loads(response.read())


def test_the_real_server_over_http(trained_tiny, tmp_path):
    SimBERT.from_pretrained(trained_tiny, compilation_cache=None).make_index(
        ["花呗怎么还款", "信用卡怎么提高额度", "明天北京会下雨吗"]).save(tmp_path / "index")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "simbert.cli", "serve", trained_tiny, "--index",
                               str(tmp_path / "index"), "--port", str(port), "--no-compile-cache"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    health = json.loads(response.read())
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        assert health["index_size"] == 3 and health["dimension"] == 128
        assert post(port, "/encode", {"texts": ["花呗怎么还款"]})["dim"] == 128
        assert post(port, "/similar", {"texts": ["花呗怎么还款"], "topn": 1})["results"][0][0][0] == "花呗怎么还款"
        assert len(post(port, "/synonyms", {"text": "花呗怎么还款", "n": 20, "k": 3})["results"]) <= 3
        with pytest.raises(urllib.error.HTTPError) as refused:
            post(port, "/encode", {"texts": []})
        assert refused.value.code == 422
        # SIGTERM while a request is in flight: it is answered, then the server stops.
        answers = []
        in_flight = threading.Thread(target=lambda: answers.append(
            post(port, "/synonyms", {"text": "花呗怎么还款", "n": 1000, "k": 3})))
        in_flight.start()
        deadline = time.time() + 60  # until the server has taken it (a loaded machine may take a while)
        while time.time() < deadline and get(port, "/metrics")["requests"].get("/synonyms", 0) < 2:
            time.sleep(0.05)
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=120)
    in_flight.join(60)
    assert len(answers) == 1 and len(answers[0]["results"]) <= 3
    # uvicorn re-raises the signal once it has shut down gracefully.
    assert server.returncode in (0, -signal.SIGTERM), output[-3000:]
    assert "Application shutdown complete" in output


def test_a_lone_surrogate_is_refused_and_echoed_safely(client):
    before = client.get("/metrics").json()["errors"]
    # An escape a JSON parser accepts but no UTF-8 encoder does: in a text (refused by
    # name), and in a value FastAPI's own refusal echoes back (was a 500).
    response = client.post("/encode", content='{"texts": ["w1", "w\\ud800"]}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["field"] == "texts[1]"
    assert "lone surrogate (U+D800) at character 1" in response.json()["detail"]
    response = client.post("/encode", content='{"texts": "\\ud800"}', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert [(error["type"], error["loc"], error["input"]) for error in response.json()["detail"]] == [
        ("list_type", ["body", "texts"], "\ud800")]
    errors = client.get("/metrics").json()["errors"]
    assert errors["422"] == before.get("422", 0) + 2  # ours and FastAPI's both counted


def test_a_server_failure_is_a_500_on_one_line_and_counted(model, monkeypatch):
    with TestClient(create_app(model, warm_up=False, batch_wait_ms=0)) as client:
        monkeypatch.setattr(model, "encode", lambda texts, **options: (_ for _ in ()).throw(
            RuntimeError("the device\nwent away")))
        response = client.post("/encode", json={"texts": ["w1"]})
        monkeypatch.undo()
        assert response.status_code == 500
        assert response.json() == {"detail": "the server failed: RuntimeError: the device went away", "field": None}
        assert client.get("/metrics").json()["errors"] == {"500": 1}
        assert client.post("/encode", json={"texts": ["w1"]}).status_code == 200


def test_a_timed_out_request_stops_its_work(model):
    """A /synonyms past the timeout stops at its next chunk of samples, so the next request
    finds the model thread free (before, the thread sampled on and it timed out too)."""
    limits = ServerLimits(max_n=1000, request_timeout_s=2.0)
    with TestClient(create_app(model, limits=limits, max_batch=8)) as client:
        samplers, calls = dict(model.decoder._samplers), []

        def slow(sampler):
            def run(*arguments):
                calls.append(time.monotonic())
                time.sleep(1.0)
                return sampler(*arguments)
            return run

        model.decoder._samplers.update({key: slow(sampler) for key, sampler in samplers.items()})
        try:
            started = time.monotonic()
            response = client.post("/synonyms", json={"text": "w10 w11", "n": 1000})  # 8 chunks of 128: 8 s
            assert response.status_code == 504
            assert client.post("/encode", json={"texts": ["w1"]}).status_code == 200
            time.sleep(1.5)  # a chunk that was running ends
        finally:
            model.decoder._samplers.update(samplers)
        assert len(calls) <= 3 and calls[-1] - started < 4, calls
        assert client.get("/metrics").json()["errors"] == {"504": 1}


def test_text_limits_follow_a_long_text_model(tmp_path):
    """A model reading 1,000 tokens (hierarchical positions on a 40-position BERT) takes
    texts of up to 1,000 characters by default; the usual model keeps 512."""
    directory = write_model_dir(str(tmp_path / "model"), TINY_CONFIG)
    long_model = SimBERT.from_pretrained(directory, max_tokens=1000, hierarchical_position=True)
    text = " ".join(f"w{i % 90 + 5}" for i in range(300))  # 300 tokens, 1,189 characters
    with TestClient(create_app(long_model, warm_up=False, batch_wait_ms=0)) as client:
        response = client.post("/encode", json={"texts": [text[:1000]]})
        assert response.status_code == 200
        np.testing.assert_allclose(response.json()["vectors"], long_model.encode([text[:1000]]), atol=1e-5)
        refused = client.post("/encode", json={"texts": [text]})
        assert refused.status_code == 413 and refused.json()["limit"] == 1000
    short_model = SimBERT.from_pretrained(directory, max_tokens=16)
    with TestClient(create_app(short_model, warm_up=False)) as client:
        assert client.post("/encode", json={"texts": ["w" * 513]}).json()["limit"] == 512
