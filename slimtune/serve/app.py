"""The FastAPI application: OpenAI's routes over one served model (and its adapters), the slimtune predict
route, the chat page, health.

Every answer that is not a success is OpenAI's error body; bodies are read and parsed here (not by FastAPI's
own validation) so that their size is bounded and each problem names the field or the limit.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from slimtune.errors import UserError
from slimtune.models.ref import ModelMeta
from slimtune.serve import protocol as p
from slimtune.serve.admission import Admission, Job
from slimtune.serve.batching import Scheduler
from slimtune.serve.decode import Row, Sampling, ServedModel, label_scores

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("page.html")


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int | None = None  # None: the model's context length
    max_tokens_cap: int = 512
    request_timeout_s: float = 120.0
    parallel: int = 8
    queue_size: int = 16
    batch_size: int = 8  # rows generated together; 1: every request alone
    batch_wait_s: float = 0.05  # how long a free lane waits for clients whose answers just ended


class Gate:
    """ASGI middleware in front of every route (a plain one: a streamed answer passes through untouched):
    starts each request's clock, refuses new requests while draining (503) and requests without the API key
    (401). The chat page and /health need no key (the page asks for it)."""

    def __init__(self, app: Any, state: Any, timeout_s: float):
        self.app, self.state, self.timeout_s = app, state, timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})["deadline"] = time.monotonic() + self.timeout_s
        open_route = scope["method"] == "GET" and scope["path"] in ("/", "/health")
        error = None
        if self.state.draining and scope["path"] != "/health":
            error = p.ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
        elif self.state.api_key and not open_route and not _key_ok(scope, self.state.api_key):
            error = p.ApiError(
                401,
                "a valid API key is required (Authorization: Bearer KEY)",
                type="authentication_error",
                code="invalid_api_key",
            )
        if error is None:
            return await self.app(scope, receive, send)
        await JSONResponse(error.body(), error.status, headers=error.headers)(scope, receive, send)


def _key_ok(scope: dict, key: str) -> bool:
    headers = dict(scope.get("headers") or [])
    given = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def create_app(served: ServedModel, name: str, limits: Limits, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="slimtune serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.draining = False
    app.state.api_key = api_key
    app.state.admission = None  # made on the server's event loop, at the first request
    meta = ModelMeta.load(served.folder)
    max_prompt = min(limits.max_prompt_tokens or served.context_length, served.context_length)
    # `parallel` requests hold a slot; `batch_size` of them share a lane (one generator) at most
    lanes = -(-limits.parallel // limits.batch_size)
    scheduler = Scheduler(served, lanes, limits.batch_size, limits.batch_wait_s)

    def admission() -> Admission:
        if app.state.admission is None:
            app.state.admission = Admission(limits.parallel, limits.queue_size)
        return app.state.admission

    @app.exception_handler(p.ApiError)
    async def _api_error(_: Request, err: p.ApiError) -> JSONResponse:
        return JSONResponse(err.body(), err.status, headers=err.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, err: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return JSONResponse(p.ApiError(err.status_code, str(err.detail), code=code).body(), err.status_code)

    @app.exception_handler(Exception)
    async def _internal(_: Request, err: Exception) -> JSONResponse:
        log.exception("internal error")
        body = p.ApiError(500, f"internal error: {type(err).__name__}", type="server_error").body()
        return JSONResponse(body, 500)

    def adapter_of(model: str | None) -> str | None:
        if model is None or model == name or model == "base":
            return None
        base, _, adapter = model.partition(":")
        if base in (name, "base") and adapter in served.adapter_names:
            return adapter
        known = ", ".join([name] + [f"{name}:{a}" for a in served.adapter_names])
        raise p.ApiError(
            404, f"the model {model!r} does not exist; served: {known}", param="model", code="model_not_found"
        )

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        too_big = p.ApiError(
            400,
            f"the request body is larger than the limit of {limits.max_body_bytes} bytes (--max-body-bytes)",
            code="body_too_large",
        )
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise too_big
        return bytes(body)

    def sampling_of(req: Any, prompt_tokens: int) -> Sampling:
        if prompt_tokens > max_prompt:
            raise p.ApiError(
                400,
                f"the prompt has {prompt_tokens} tokens; the limit is {max_prompt} (--max-prompt-tokens / "
                "the model's context length)",
                param="messages",
                code="prompt_too_long",
            )
        room = served.context_length - prompt_tokens
        asked = req.max_completion_tokens or req.max_tokens
        if asked is not None and asked > limits.max_tokens_cap:
            raise p.ApiError(
                400,
                f"max_tokens {asked} is above this server's cap of {limits.max_tokens_cap} "
                "(--max-tokens-cap)",
                param="max_tokens",
                code="max_tokens_too_large",
            )
        if (asked or 1) > room:
            raise p.ApiError(
                400,
                f"the prompt ({prompt_tokens} tokens) and max_tokens ({asked or 1}) exceed the model's "
                f"context length of {served.context_length} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        vocab = len(served.tokenizer)
        bias = {int(k): v for k, v in (req.logit_bias or {}).items()}
        if any(k >= vocab for k in bias):
            raise p.ApiError(400, f"logit_bias: token ids must lie in [0, {vocab})", param="logit_bias")
        return Sampling(
            logit_bias=bias,
            max_tokens=asked or min(limits.max_tokens_cap, room),
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            seed=req.seed,
            stop=req.stops(),
        )

    async def start(request: Request, **what: Any) -> Job:
        """A slot (or 429 / 504), then the request queued for a lane (`row=` a generation, `work=` run alone)."""
        await admission().acquire(request.state.deadline, request.is_disconnected)
        return scheduler.submit(Job(admission()), **what)

    async def complete(request: Request, req: Any, prompt_ids: list[int], stop_text: str | None, chat: bool):
        adapter = adapter_of(req.model)
        sampling = sampling_of(req, len(prompt_ids))
        row = Row(prompt_ids, sampling, request.state.deadline, stop_text)
        job = await start(request, row=row, adapter=adapter, stream=req.stream)
        rid = p.new_id("chatcmpl" if chat else "cmpl")
        if req.stream:
            return StreamingResponse(
                _events(job, rid, req, len(prompt_ids), chat),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        outcome = await job.result(request.is_disconnected)
        if outcome.finish_reason == "timeout":
            raise _timeout()
        use = p.usage(len(prompt_ids), outcome.completion_tokens)
        make = p.chat_response if chat else p.completion_response
        return make(rid, req.model, outcome.text, outcome.finish_reason, use)

    async def _events(job: Job, rid: str, req: Any, prompt_tokens: int, chat: bool):
        def chunk(text: str | None, finish: str | None = None) -> bytes:
            if chat:
                delta = {} if text is None else {"content": text}
                return p.sse(p.chat_chunk(rid, req.model, delta, finish))
            return p.sse(p.completion_chunk(rid, req.model, text or "", finish))

        try:
            if chat:
                yield p.sse(p.chat_chunk(rid, req.model, {"role": "assistant", "content": ""}, None))
            while True:
                kind, value = await job.events.get()
                if kind == "text":
                    yield chunk(value)
                    continue
                if kind == "error":
                    log.error("generation failed: %r", value)
                    yield p.sse(
                        p.ApiError(500, f"internal error: {type(value).__name__}", type="server_error").body()
                    )
                    return
                break
            if value.finish_reason == "timeout":
                yield p.sse(_timeout().body())
                return
            yield chunk(None, value.finish_reason)
            if req.include_usage():
                tail = (
                    p.chat_chunk(rid, req.model, {}, None)
                    if chat
                    else p.completion_chunk(rid, req.model, "", None)
                )
                tail["choices"] = []
                tail["usage"] = p.usage(prompt_tokens, value.completion_tokens)
                yield p.sse(tail)
            yield p.sse("[DONE]")
        finally:  # also when the client went away: the generating thread stops at its next token
            job.stop()

    def _timeout() -> p.ApiError:
        return p.ApiError(
            504,
            f"the request ran past its time limit of {limits.request_timeout_s:g} s (--request-timeout)",
            type="server_error",
            code="timeout",
        )

    @app.get("/health")
    async def health() -> JSONResponse:
        adm = app.state.admission
        body = {
            "status": "draining" if app.state.draining else "ok",
            "model": name,
            "running": adm.running if adm else 0,
            "waiting": adm.waiting if adm else 0,
            "largest_batch": scheduler.largest_batch,
        }
        return JSONResponse(body, 503 if app.state.draining else 200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        ids = [name] + [f"{name}:{a}" for a in served.adapter_names]
        created = int(served.folder.stat().st_mtime)
        return {
            "object": "list",
            "data": [{"id": i, "object": "model", "created": created, "owned_by": "slimtune"} for i in ids],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = p.parse(p.ChatRequest, await read_body(request))
        adapter_of(req.model)
        tokenizer = served.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise p.ApiError(
                400, f"the model {name!r} has no chat template; use /v1/completions", param="messages"
            )
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages
        ]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as err:  # a template may refuse an order of roles (jinja raises its own errors)
            raise p.ApiError(
                400, f"the chat template refused these messages: {err}", param="messages"
            ) from None
        from slimtune.data.chat import turn_end

        return await complete(
            request, req, served.encode(text, add_special_tokens=False), turn_end(tokenizer), True
        )

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = p.parse(p.CompletionRequest, await read_body(request))
        adapter_of(req.model)
        prompt = (
            req.prompt[0] if isinstance(req.prompt, list) and isinstance(req.prompt[0], str) else req.prompt
        )
        if isinstance(prompt, str):
            ids = served.encode(prompt)
        else:
            vocab = len(served.tokenizer)
            if any(not 0 <= t < vocab for t in prompt):
                raise p.ApiError(400, f"prompt: token ids must lie in [0, {vocab})", param="prompt")
            ids = list(prompt)
        if not ids:
            raise p.ApiError(400, "prompt: the prompt is empty", param="prompt")
        return await complete(request, req, ids, None, False)

    @app.post("/v1/slimtune/predict")
    async def predict(request: Request):
        req = p.parse(p.PredictRequest, await read_body(request))
        adapter = adapter_of(req.model)
        if meta is None or not meta.labels:
            raise p.ApiError(
                400,
                f"{served.folder} records no label set (slimtune.json); predict needs a model "
                "trained by slimtune on a labelled task",
                code="no_labels",
            )
        from slimtune.evaluate.generate import check_row, encode_row

        try:
            check_row(served.folder, req.input, meta)
            prompt_ids = encode_row(req.input, meta, served.tokenizer)
        except UserError as err:
            raise p.ApiError(400, str(err).replace("--input", "input"), param="input") from None
        if len(prompt_ids) > max_prompt:
            raise p.ApiError(
                400,
                f"the input makes {len(prompt_ids)} tokens; the limit is {max_prompt}",
                param="input",
                code="prompt_too_long",
            )
        job = await start(
            request, work=lambda emit, cancel: label_scores(served, prompt_ids, meta.labels, adapter)
        )
        scores = await job.result(request.is_disconnected)
        label = max(scores, key=scores.get)
        return {
            "model": req.model or name,
            "label": label,
            "scores": {k: round(v, 6) if math.isfinite(v) else None for k, v in scores.items()},
        }

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(
            PAGE.read_text().replace(
                "__MODELS__", json.dumps([name] + [f"{name}:{a}" for a in served.adapter_names])
            )
        )

    app.add_middleware(Gate, state=app.state, timeout_s=limits.request_timeout_s)
    return app
