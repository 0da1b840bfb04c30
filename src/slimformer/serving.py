"""Run an engine directory on its own: classify texts, serve them over HTTP, load-test the server.

What ``slimformer predict``, ``serve`` and ``loadtest`` call. For ONNX engines this module
needs only onnxruntime, onnx (the checker in :func:`~slimformer.engines.verify_engine`),
tokenizers, numpy and aiohttp (``pip install '.[serve]'``): it imports neither torch nor
transformers nor dvc. TorchScript engines import torch, lazily, and only with explicit trust.

Every prediction is ``{"label": str, "score": float}``, the softmax probability of the arg-max
class: the shape of the Hugging Face text-classification task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimformer.engines import Runner, load_engine, read_manifest
from slimformer.errors import CheckpointError, DataError
from slimformer.measure import percentiles

DEFAULT_MAX_REQUEST_BYTES = 1 << 20  # 1 MiB of JSON
DEFAULT_MAX_INPUTS = 64  # texts per request
DEFAULT_MAX_TEXT_CHARS = 20_000  # a text is truncated to max_length tokens anyway; this bounds tokenizer work


# ------------------------------------------------------------------ classifying


def load_fast_tokenizer(engine_dir: Path, max_length: int):
    """The engine's ``tokenizer.json`` as a ``tokenizers.Tokenizer`` that truncates to ``max_length``.

    Same tokens as the ``transformers`` fast tokenizer the pipeline used (it wraps this very
    file), special tokens added, without importing transformers.
    """
    from tokenizers import Tokenizer  # noqa: PLC0415

    path = engine_dir / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; the engine directory needs its tokenizer.json (re-export the engine)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a plain Exception for bad files
        raise CheckpointError(f"{path}: not a readable tokenizer ({e})") from None
    tok.no_padding()  # rows are padded per batch here, to the batch's longest row
    tok.enable_truncation(max_length)
    return tok


def engine_max_length(engine_dir: Path, manifest: dict[str, Any]) -> int:
    """The length the engine was gated and measured at: the manifest's, else the tokenizer config's."""
    if "max_length" in manifest:
        return int(manifest["max_length"])
    config = engine_dir / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text(encoding="utf-8")).get("model_max_length")
        if isinstance(value, int) and 0 < value <= 1_000_000:
            return value
    raise CheckpointError(f"{engine_dir / 'manifest.json'}: no max_length (nor model_max_length in tokenizer_config.json)")


def pad_id(engine_dir: Path, tok) -> int:
    """The id of the tokenizer config's pad token (``[PAD]`` if it names none)."""
    config = engine_dir / "tokenizer_config.json"
    name = json.loads(config.read_text(encoding="utf-8")).get("pad_token", "[PAD]") if config.is_file() else "[PAD]"
    name = name.get("content", "[PAD]") if isinstance(name, dict) else name
    found = tok.token_to_id(name)
    if found is None:
        raise CheckpointError(f"{engine_dir}: the pad token {name!r} is not in tokenizer.json")
    return int(found)


def softmax_top(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arg-max class and its softmax probability per row of (batch, classes) logits."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    top = probs.argmax(axis=1)
    return top, probs[np.arange(len(top)), top]


class Classifier:
    """A verified engine with its tokenizer and label names: ``classifier(texts) -> [{"label", "score"}]``."""

    def __init__(self, engine_dir: str | Path, num_threads: int = 2, trust_torchscript: bool = False) -> None:
        self.engine_dir = Path(engine_dir)
        self.runner: Runner = load_engine(self.engine_dir, num_threads, trust_torchscript=trust_torchscript)  # verifies first
        self.manifest = read_manifest(self.engine_dir)
        self.labels: list[str] = list(self.manifest.get("labels", []))
        self.max_length = engine_max_length(self.engine_dir, self.manifest)
        self.tokenizer = load_fast_tokenizer(self.engine_dir, self.max_length)
        self.pad_id = pad_id(self.engine_dir, self.tokenizer)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """int64 (batch, longest) input_ids and attention_mask, right-padded with the pad id."""
        rows = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return ids, mask

    def __call__(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """One engine call on ``texts`` as one padded batch."""
        if not texts:
            return []
        top, score = softmax_top(self.runner(*self.encode(texts)))
        return [{"label": self.label(int(k)), "score": float(s)} for k, s in zip(top, score, strict=True)]

    def label(self, k: int) -> str:
        return self.labels[k] if k < len(self.labels) else f"LABEL_{k}"

    def classify(self, texts: Sequence[str], batch_size: int = 1) -> list[dict[str, Any]]:
        """``texts`` in engine calls of ``batch_size`` (1: each sentence alone, as ``serve --max-batch 1`` runs them)."""
        out: list[dict[str, Any]] = []
        for k in range(0, len(texts), batch_size):
            out += self(texts[k : k + batch_size])
        return out


def read_texts(path: str | Path) -> list[str]:
    """One text per non-empty line of ``path`` (a plain text file; "-" reads standard input)."""
    import sys  # noqa: PLC0415

    try:
        lines = sys.stdin.read().splitlines() if str(path) == "-" else Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read texts ({e})") from None
    return [line for line in lines if line.strip()]


# ------------------------------------------------------------------ serving


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask: body bytes, texts, characters per text; and rows per engine call."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_inputs: int = DEFAULT_MAX_INPUTS
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    max_batch: int = 1

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_inputs", "max_text_chars", "max_batch"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_inputs(body: bytes, limits: ServeLimits) -> list[str]:
    """The texts of a ``{"inputs": [str, ...]}`` (or ``{"inputs": str}``) body; RequestError otherwise."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"body is not JSON ({e})") from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise RequestError(400, 'body must be a JSON object {"inputs": ["text", ...]}')
    inputs = payload["inputs"]
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
        raise RequestError(422, '"inputs" must be a string or a list of strings')
    if not inputs or not all(t.strip() for t in inputs):
        raise RequestError(422, '"inputs" must hold at least one text, and no empty text')
    if len(inputs) > limits.max_inputs:
        raise RequestError(413, f'"inputs" holds {len(inputs)} texts; at most {limits.max_inputs} per request (--max-inputs)')
    longest = max(len(t) for t in inputs)
    if longest > limits.max_text_chars:
        raise RequestError(413, f"a text of {longest} characters; at most {limits.max_text_chars}")
    return inputs


class Batcher:
    """Runs texts through the classifier, one engine call at a time, joining concurrent requests.

    Each text waits in a queue; the worker takes the first waiting text and every other one
    already waiting, up to ``max_batch``, and classifies them as one padded batch in a
    single worker thread (ONNX Runtime uses its own threads inside the call and releases
    the GIL, so the event loop keeps accepting requests meanwhile). With ``max_batch=1``
    every text is classified alone, exactly as ``slimformer predict`` does.
    """

    def __init__(self, classifier: Classifier, max_batch: int) -> None:
        self.classifier = classifier
        self.max_batch = max_batch
        self.queue: asyncio.Queue[tuple[str, asyncio.Future]] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self.task: asyncio.Task | None = None
        self.calls = 0
        self.rows = 0

    async def start(self) -> None:
        self.task = asyncio.create_task(self._work())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)

    async def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        futures = []
        for t in texts:
            fut = loop.create_future()
            self.queue.put_nowait((t, fut))
            futures.append(fut)
        return list(await asyncio.gather(*futures))

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            batch = [(t, fut) for t, fut in batch if not fut.done()]  # a client that went away: skip its texts
            if not batch:
                continue
            texts = [t for t, _ in batch]
            try:
                results = await loop.run_in_executor(self.executor, self.classifier, texts)
            except Exception as e:  # noqa: BLE001 - the error goes to each waiting request, the worker lives on
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.calls += 1
            self.rows += len(batch)
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)


def make_app(classifier: Classifier, limits: ServeLimits):
    """The aiohttp application: ``GET /health``, ``POST /predict``. Bad requests get a 4xx JSON error."""
    from aiohttp import web  # noqa: PLC0415

    batcher = Batcher(classifier, limits.max_batch)
    m = classifier.manifest

    def error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "variant": m.get("variant"), "format": m.get("format"),
                                  "precision": m.get("precision"), "labels": classifier.labels,
                                  "max_length": classifier.max_length, "max_batch": limits.max_batch,
                                  "engine_calls": batcher.calls, "rows": batcher.rows})  # fmt: skip

    async def predict(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > limits.max_request_bytes:
            return error(413, f"body of {request.content_length} bytes; at most {limits.max_request_bytes} (--max-request-bytes)")
        try:
            body = await request.read()  # aiohttp stops reading past client_max_size
        except web.HTTPRequestEntityTooLarge:
            return error(413, f"body larger than {limits.max_request_bytes} bytes (--max-request-bytes)")
        try:
            texts = parse_inputs(body, limits)
        except RequestError as e:
            return error(e.status, str(e))
        try:
            return web.json_response(await batcher.classify(texts))
        except Exception as e:  # noqa: BLE001 - an engine failure is the server's (500), and it keeps serving
            return error(500, f"{type(e).__name__}: {str(e)[:300]}")

    async def on_startup(app: web.Application) -> None:
        await batcher.start()

    async def on_cleanup(app: web.Application) -> None:
        await batcher.stop()

    @web.middleware
    async def json_errors(request: web.Request, handler):
        try:
            return await handler(request)
        except web.HTTPException as e:  # 404, 405, ...: the same JSON error shape as the rest
            if e.status < 400:
                raise
            return error(e.status, f"{e.reason}: {request.method} {request.path} (this server has GET /health, POST /predict)")

    app = web.Application(client_max_size=limits.max_request_bytes, middlewares=[json_errors])
    app.router.add_get("/health", health)
    app.router.add_post("/predict", predict)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def serve(classifier: Classifier, host: str, port: int, limits: ServeLimits) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM)."""
    from aiohttp import web  # noqa: PLC0415

    print(f"slimformer serve: {classifier.engine_dir} ({classifier.manifest['format']}, {classifier.manifest['precision']}) "
          f"on http://{host}:{port}  (POST /predict, GET /health; max batch {limits.max_batch})", flush=True)  # fmt: skip
    web.run_app(make_app(classifier, limits), host=host, port=port, print=None, access_log=None)


# ------------------------------------------------------------------ load test


async def _load(url: str, texts: list[str], concurrency: int, requests: int, timeout_s: float) -> dict[str, Any]:
    import aiohttp  # noqa: PLC0415

    latencies: list[float] = []
    answers: dict[int, dict] = {}
    errors: list[str] = []
    next_i = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal next_i
        while next_i < requests:
            i, next_i = next_i, next_i + 1
            text = texts[i % len(texts)]
            t0 = time.perf_counter()
            try:
                async with session.post(url, json={"inputs": [text]}) as resp:
                    body = await resp.json(content_type=None)
                    if resp.status != 200:
                        errors.append(f"HTTP {resp.status}: {body}")
                        continue
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            latencies.append(time.perf_counter() - t0)
            answers[i] = body[0]

    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "answers": answers, "errors": errors, "wall": wall}


def load_test(url: str, texts: list[str], concurrency: int = 8, requests: int = 1000,
              expect: dict[str, dict] | None = None, score_tol: float = 1e-4, timeout_s: float = 60.0) -> dict[str, Any]:  # fmt: skip
    """POST ``requests`` one-text requests (texts in turn) from ``concurrency`` clients; latency and errors.

    ``expect`` maps a text to its ``{"label", "score"}`` (``slimformer predict``'s output): an
    answer with another label, or a score further than ``score_tol`` from it, is a mismatch.
    """
    if not texts:
        raise DataError("loadtest: no texts to send")
    if not url.rstrip("/").endswith("/predict"):
        url = url.rstrip("/") + "/predict"
    raw = asyncio.run(_load(url, texts, concurrency, requests, timeout_s))
    mismatches = []
    for i, got in sorted(raw["answers"].items()):
        want = (expect or {}).get(texts[i % len(texts)])
        if want is not None and (got.get("label") != want["label"] or abs(float(got.get("score", -1)) - want["score"]) > score_tol):
            mismatches.append({"text": texts[i % len(texts)], "expected": want, "got": got})
    lat = raw["latencies"]
    pct = {k: round(v, 2) for k, v in percentiles([1000 * t for t in lat], (50, 99)).items()} if lat else {}
    return {
        "url": url, "requests": requests, "concurrency": concurrency, "ok": len(lat), "errors": len(raw["errors"]),
        "first_errors": raw["errors"][:3], "checked": sum(texts[i % len(texts)] in (expect or {}) for i in raw["answers"]),
        "mismatches": len(mismatches), "first_mismatches": mismatches[:3],
        "p50_ms": pct.get("p50_ms"), "p99_ms": pct.get("p99_ms"),
        "requests_per_s": round(len(lat) / raw["wall"], 1) if raw["wall"] > 0 else None, "seconds": round(raw["wall"], 2),
    }  # fmt: skip


def read_expectations(path: str | Path) -> dict[str, dict]:
    """``slimformer predict`` output (one JSON object per line) as {text: {"label", "score"}}."""
    out = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out[row["text"]] = {"label": str(row["label"]), "score": float(row["score"])}
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}:{n}: not a line of `slimformer predict` output ({e})") from None
    return out
