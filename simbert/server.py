"""`simbert serve`: one `SimBERT` behind a FastAPI app.

    POST /encode    {"texts": [...]}                  -> {"vectors": [[...]], "dim": d}
    POST /similar   {"texts": [...], "topn": 10}      -> {"results": [[[text, score], ...], ...]}
    POST /synonyms  {"text": "...", "n": 100, "k": 20} -> {"results": [[text, score], ...]}
    GET  /health    model, dimension, backend, index size;  GET /metrics  counters

Every model call runs on one model thread, in order. The texts of concurrent /encode and
/similar requests are gathered for up to `batch_wait_ms` (or until `max_batch` texts
wait) into one `SimBERT.encode` call (`MicroBatcher`); the model is warmed up before the
first request (every padded encode shape, and the sampler for every `SAMPLE_ROWS`, to
which /synonyms rounds n up), so no request pays a compile. Limits answer with a JSON
error naming the field and the limit: 413 for too many texts or characters, 422 for an
empty or non-string text and for n, k, topn out of range, 409 for /similar without an
index, 504 past the request timeout (the work behind it is cancelled: texts not yet
encoded are dropped, /synonyms stops before its next chunk of samples), 500 with the
error on one line for a failure of the server's own (logged whole). Responses are JSON;
text that is not valid Unicode (a lone surrogate escape such as "\\ud800") is refused
in a request's texts (422) and escaped wherever a response echoes it. /metrics counts
requests by path and error responses by status, FastAPI's own 422s included. uvicorn
stops on SIGTERM after the requests in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

from simbert.api import SimBERT
from simbert.arguments import check_integer
from simbert.kernels import Platform

logger = logging.getLogger(__name__)

# /synonyms samples n rounded up to one of these (a compiled sampler each, warmed up at
# start); a larger n is drawn in chunks of the last.
SAMPLE_ROWS = (8, 16, 32, 64, 128)


DEFAULT_MAX_CHARS = 512


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask."""

    max_texts: int = 64  # texts per /encode or /similar request
    max_chars: int | None = None  # characters per text; None: 512, or the model's max_tokens if more
    max_n: int = 1000  # /synonyms samples
    max_k: int = 100  # /synonyms results and /similar topn
    request_timeout_s: float = 30.0


LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class SafeJSONResponse(JSONResponse):
    """A JSON response that any text can go into: UTF-8 as FastAPI writes it, or, when
    the content holds a lone surrogate (not encodable as UTF-8), with every non-ASCII
    character escaped (`\\ud800`), which JSON allows."""

    def render(self, content) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, the `field` at fault, a message."""

    def __init__(self, status: int, field: str | None, message: str, limit: float | None = None):
        super().__init__(message)
        self.status, self.field, self.limit = status, field, limit


class RequestBody(BaseModel):
    """A request body: an unknown field (a misspelt `topn`, an option the endpoint does
    not take) is refused (422, naming it), not ignored."""

    model_config = ConfigDict(extra="forbid")


class EncodeRequest(RequestBody):
    texts: list[StrictStr]


class SimilarRequest(RequestBody):
    texts: list[StrictStr]
    topn: StrictInt = 10


class SynonymsRequest(RequestBody):
    text: StrictStr
    n: StrictInt = 100
    k: StrictInt = 20
    seed: StrictInt | None = None


def sample_rows(n: int) -> int:
    """The compiled sampler size /synonyms uses for n samples."""
    return next((rows for rows in SAMPLE_ROWS if rows >= n), SAMPLE_ROWS[-1])


class MicroBatcher:
    """Gathers the texts of concurrent requests into one `encode(texts)` call: the first
    waiting request opens a batch that closes after `wait_ms` or at `max_texts` texts;
    `encode` runs through `run(function)` (the model thread). With `wait_ms=0` every
    request is encoded alone."""

    def __init__(self, encode: Callable[[list[str]], np.ndarray], run, wait_ms: float, max_texts: int):
        self.encode_texts = encode
        self.run = run
        self.wait_s = wait_ms / 1000.0
        self.max_texts = max_texts
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batches = 0
        self.texts = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def encode(self, texts: list[str]) -> np.ndarray:
        if self.wait_s <= 0:
            return (await self._encode_now([texts]))[0]
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

    async def _encode_now(self, groups: list[list[str]]) -> list[np.ndarray]:
        flat = [text for group in groups for text in group]
        vectors = await self.run(lambda: self.encode_texts(flat))
        self.batches += 1
        self.texts += len(flat)
        bounds = np.cumsum([0] + [len(group) for group in groups])
        return [vectors[start:end] for start, end in zip(bounds[:-1], bounds[1:])]

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while sum(len(texts) for texts, _ in waiting) < self.max_texts:
                try:
                    waiting.append(await asyncio.wait_for(self.queue.get(), max(deadline - loop.time(), 0)))
                except asyncio.TimeoutError:
                    break
            waiting = [(texts, future) for texts, future in waiting if not future.cancelled()]  # timed out
            if not waiting:
                continue
            try:
                results = await self._encode_now([texts for texts, _ in waiting])
            except Exception as error:  # noqa: BLE001 (handed to each waiting request)
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), vectors in zip(waiting, results):
                if not future.done():
                    future.set_result(vectors)


def create_app(model: str | os.PathLike | SimBERT, index_dir: str | os.PathLike | None = None,
               limits: ServerLimits = ServerLimits(), batch_wait_ms: float = 5.0, max_batch: int = 64,
               max_tokens: int = 64, warm_up: bool = True, compilation_cache: str | None = None):
    """The FastAPI app serving `model` (a model directory, or a loaded `SimBERT`) and, for
    /similar, the index in `index_dir` (the index of another model is refused).

    Args:
        model: a model directory (or a training output: its newest checkpoint), or a
            loaded `SimBERT`.
        index_dir: an index directory built by this model, for /similar (None: /similar
            answers 409).
        limits: what one request may ask (`ServerLimits`: texts, characters, n, k, timeout).
        batch_wait_ms: how long /encode and /similar requests are gathered into one encode
            call (0: no micro-batching).
        max_batch: texts per encode call.
        max_tokens: `SimBERT.from_pretrained`'s `max_tokens`, when `model` is a directory.
        warm_up: compile every padded encode shape and the samplers before the first
            request.
        compilation_cache: `SimBERT.from_pretrained`'s `compilation_cache`, when `model`
            is a directory.

    Returns:
        The FastAPI app; run it with `simbert.server.serve(app, host, port)` or any ASGI
        server.

    Example:
        >>> from simbert.server import ServerLimits, create_app, serve
        >>> app = create_app("runs/tiny", index_dir="faq_index", limits=ServerLimits(max_texts=32))
        >>> serve(app, "127.0.0.1", 8000)
    """
    check_integer("max_batch", max_batch)
    if not isinstance(model, SimBERT):
        model = SimBERT.from_pretrained(model, max_tokens=max_tokens, compilation_cache=compilation_cache)
    if index_dir is not None:
        model.load_index(index_dir)
        model.index.check_model(model.fingerprint, model.name, strict=True)
    # A long-text model (max_tokens past 512) takes texts as long as it reads.
    max_chars = limits.max_chars if limits.max_chars is not None else max(DEFAULT_MAX_CHARS, model.max_tokens)
    model_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="simbert-model")
    counters = {"requests": {}, "errors": {}, "synonym_calls": 0}
    state = {}

    async def on_model_thread(function, cancel: threading.Event | None = None):
        """`function()` on the model thread. If the request is cancelled (timed out), a
        call still queued is dropped and a running one is asked to stop through `cancel`."""
        try:
            return await asyncio.get_running_loop().run_in_executor(model_thread, function)
        except asyncio.CancelledError:
            if cancel is not None:
                cancel.set()
            raise

    def count(kind: str, key: str) -> None:
        counters[kind][key] = counters[kind].get(key, 0) + 1

    @contextlib.asynccontextmanager
    async def lifespan(app):
        started = time.perf_counter()
        if warm_up:
            state["warm_up_programs"] = await on_model_thread(lambda: model.warm_up(max_batch, SAMPLE_ROWS))
        state["warm_up_s"] = round(time.perf_counter() - started, 3)
        batcher = MicroBatcher(lambda texts: model.encode(texts, batch_size=max_batch), on_model_thread,
                               batch_wait_ms, max_batch)
        batcher.start()
        state["batcher"] = batcher
        yield
        await batcher.stop()
        model_thread.shutdown(wait=True)

    app = FastAPI(title="simbert", lifespan=lifespan, default_response_class=SafeJSONResponse)

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError):
        body = {"detail": str(error), "field": error.field}
        if error.limit is not None:
            body["limit"] = error.limit
        return SafeJSONResponse(body, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        # FastAPI's own answer, written so that an echoed lone surrogate cannot break it.
        return SafeJSONResponse({"detail": jsonable_encoder(error.errors())}, status_code=422)

    @app.middleware("http")
    async def count_and_catch(request: Request, call_next):
        path = request.url.path
        count("requests", path)
        try:
            response = await call_next(request)
        except Exception as error:  # noqa: BLE001 (a failure of the server's own: logged whole, answered 500)
            logger.exception("%s %s failed", request.method, path)
            message = " ".join(str(error).split()) or type(error).__name__
            response = SafeJSONResponse({"detail": f"the server failed: {type(error).__name__}: {message}",
                                         "field": None}, status_code=500)
        if response.status_code >= 400:
            count("errors", str(response.status_code))
        return response

    async def within_timeout(work):
        """Await `work` (a coroutine) for at most the request timeout; past it, `work` is
        cancelled (and with it what it waits for, see `on_model_thread`) and 504 answered."""
        try:
            return await asyncio.wait_for(work, limits.request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, None, f"the request took longer than {limits.request_timeout_s:g} s",
                               limits.request_timeout_s) from None

    def checked_texts(texts: list[str]) -> list[str]:
        if not texts:
            raise RequestError(422, "texts", "texts is empty; give at least one text")
        if len(texts) > limits.max_texts:
            raise RequestError(413, "texts", f"texts holds {len(texts)} texts; the limit is {limits.max_texts} "
                                             f"a request", limits.max_texts)
        for i, text in enumerate(texts):
            checked_text(text, f"texts[{i}]")
        return texts

    def checked_text(text: str, field: str) -> str:
        if len(text) > max_chars:
            raise RequestError(413, field, f"{field} has {len(text)} characters; the limit is {max_chars}",
                               max_chars)
        if surrogate := LONE_SURROGATE.search(text):
            raise RequestError(422, field, f"{field} holds a lone surrogate (U+{ord(surrogate.group()):04X}) at "
                                           f"character {surrogate.start()}, which is not a Unicode character; "
                                           f"send valid UTF-8 text")
        if len(model.tokenizer.tokenize(text)) <= 2:
            raise RequestError(422, field, f"{field} {text!r} has no token once cleaned (empty, or only spaces, "
                                           f"control or zero-width characters)")
        return text

    def checked_count(name: str, value: int, maximum: int) -> int:
        try:
            return check_integer(name, value, 1, maximum)
        except ValueError as error:
            raise RequestError(422, name, str(error), maximum) from None

    @app.post("/encode")
    async def encode(request: EncodeRequest):
        vectors = await within_timeout(state["batcher"].encode(checked_texts(request.texts)))
        return {"vectors": vectors.tolist(), "dim": model.dimension}

    @app.post("/similar")
    async def similar(request: SimilarRequest):
        if model.index is None:
            raise RequestError(409, "index", "no index is loaded: start the server with --index INDEX_DIR "
                                             "(create_app(..., index_dir=...))")
        topn = checked_count("topn", request.topn, limits.max_k)
        texts = checked_texts(request.texts)

        async def search():
            vectors = await state["batcher"].encode(texts)
            return await asyncio.to_thread(model.index.search, vectors, topn)  # numpy / faiss, off the event loop

        found = await within_timeout(search())
        return {"results": [[[text, score] for text, score in row] for row in found]}

    @app.post("/synonyms")
    async def synonyms(request: SynonymsRequest):
        text = checked_text(request.text, "text")
        n = checked_count("n", request.n, limits.max_n)
        k = checked_count("k", request.k, limits.max_k)
        if request.seed is not None and request.seed < 0:
            raise RequestError(422, "seed", f"seed should be an integer of at least 0, got {request.seed}")
        counters["synonym_calls"] += 1
        cancel = threading.Event()
        found = await within_timeout(on_model_thread(
            lambda: model.gen_synonyms(text, n=n, k=k, with_scores=True, seed=request.seed, rows=sample_rows(n),
                                       cancel=cancel), cancel))
        return {"results": [[paraphrase, score] for paraphrase, score in found]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model.name, "fingerprint": model.fingerprint, "dimension": model.dimension,
                "backend": Platform.current().backend,
                "index_size": len(model.index) if model.index is not None else 0,
                "warm_up_s": state.get("warm_up_s"), "warm_up_programs": state.get("warm_up_programs")}

    @app.get("/metrics")
    async def metrics():
        batcher = state["batcher"]
        return {**counters, "encode_calls": batcher.batches, "encoded_texts": batcher.texts,
                "compiled_programs": model.compiled_programs}

    return app


def serve(app, host: str = "127.0.0.1", port: int = 8000, graceful_timeout_s: float = 30.0) -> None:
    """Run `app` with uvicorn until SIGINT / SIGTERM (requests in flight finish first)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=graceful_timeout_s, log_level="info")
