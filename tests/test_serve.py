"""`slimtune serve` in a subprocess on 127.0.0.1, spoken to with the official `openai` client and with raw HTTP:
chat and completions streamed and not, sampling options, the predict route, bad requests and keys, a client
that leaves mid-stream, a full queue, a time limit, and SIGTERM with a request in flight.

The model is tests/tiny_models.py's Llama with an 8192-token context, exported to int4 by the ModelBuilder pass
(random weights: its text is noise, so tests compare answers with each other, never with fixed strings).
A "long" request bans EOS through logit_bias and asks for thousands of tokens: it runs for seconds.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from slimtune.models.ref import ModelMeta
from tests.serve_helpers import LABELS, TEMPLATE, Server, build_int4, tiny_long_context

openai = pytest.importorskip("openai")
pytest.importorskip("onnxruntime_genai")

NAME = "int4"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    return build_int4(tiny_long_context(root / "hf"), root / NAME)


@pytest.fixture(scope="module")
def server(model):
    started = Server(model, "--max-tokens-cap", "8000")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def narrow(model):
    """One request at a time, none waiting, three seconds each."""
    started = Server(
        model, "--parallel", "1", "--queue-size", "0", "--request-timeout", "3", "--max-tokens-cap", "8000"
    )
    yield started
    started.stop()


def client(server: Server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def no_eos(model: Path) -> dict[str, int]:
    from slimtune.models.hf import load_tokenizer

    return {str(load_tokenizer(model).eos_token_id): -100}


def post(
    server: Server, path: str, body: bytes | dict, headers: dict | None = None
) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of a POST, errors included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", path, data, {"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    status, payload, head = response.status, response.read(), dict(response.getheaders())
    connection.close()
    return status, json.loads(payload), head


def health(server: Server) -> dict:
    with urllib.request.urlopen(server.url + "/health", timeout=10) as response:
        return json.loads(response.read())


def open_stream(server: Server, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request(
        "POST", "/v1/completions", json.dumps({**body, "stream": True}), {"Content-Type": "application/json"}
    )
    return connection, connection.getresponse()


def wait_for(condition, seconds: float) -> float:
    """Seconds until `condition()` held; fails after `seconds`."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - start


# ---------------------------------------------------------------------------------------------- happy paths


def test_models_and_health(server):
    assert [m.id for m in client(server).models.list().data] == [NAME]
    assert health(server)["status"] == "ok"


def test_chat_streamed_equals_unstreamed(server, model):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "I am so happy today!"},
    ]
    args = dict(model=NAME, messages=messages, max_tokens=24, temperature=0, logit_bias=no_eos(model))
    whole = client(server).chat.completions.create(**args)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 24 and whole.usage.prompt_tokens > 5
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 24
    chunks = list(
        client(server).chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_completions_seed_and_sampling(server):
    args = dict(
        model=NAME, prompt="### Text: I miss my old friends.", max_tokens=16, temperature=1.0, top_p=0.9
    )
    first = client(server).completions.create(**args, seed=7)
    again = client(server).completions.create(**args, seed=7)
    other = client(server).completions.create(**args, seed=8)
    assert first.choices[0].text == again.choices[0].text
    assert first.choices[0].text != other.choices[0].text
    streamed = client(server).completions.create(**args, seed=7, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == first.choices[0].text
    # top_k=1 is greedy whatever the temperature
    greedy = client(server).completions.create(
        model=NAME, prompt=args["prompt"], max_tokens=16, temperature=0
    )
    top1 = client(server).completions.create(**args, seed=3, extra_body={"top_k": 1})
    assert top1.choices[0].text == greedy.choices[0].text


def test_stop_sequence_cuts_the_answer(server, model):
    args = dict(
        model=NAME, prompt="The quick brown fox", max_tokens=40, temperature=0, logit_bias=no_eos(model)
    )
    full = client(server).completions.create(**args).choices[0].text
    stop = next(full[i : i + 3] for i in range(6, len(full) - 3) if full[i : i + 3].strip())
    cut = client(server).completions.create(**args, stop=[stop, "never-there"])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client(server).completions.create(**args, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[: full.index(stop)]


def test_sse_as_openai_sends_it(server):
    connection, response = open_stream(server, {"model": NAME, "prompt": "Wow", "max_tokens": 5})
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    raw = response.read().decode()
    connection.close()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    assert json.loads(events[0][6:])["object"] == "text_completion"


def test_predict_returns_a_recorded_label(server, model):
    status, body, _ = post(server, "/v1/slimtune/predict", {"input": {"phrase": "The dark alley scares me."}})
    assert status == 200, body
    assert body["label"] in LABELS and set(body["scores"]) == set(LABELS)
    assert body["label"] == max(body["scores"], key=body["scores"].get)
    # the same label the evaluator's likelihood ranking gives for the same row
    from slimtune.evaluate.evaluator import likelihood_predictions
    from slimtune.evaluate.generate import prompt_ids_from_row
    from slimtune.models.onnx_genai import OnnxGenaiModel

    local = OnnxGenaiModel(model)
    ids, _ = prompt_ids_from_row(model, json.dumps({"phrase": "The dark alley scares me."}), local.tokenizer)
    assert likelihood_predictions(local, [ids], LABELS, progress=False) == [body["label"]]
    status, body, _ = post(server, "/v1/slimtune/predict", {"input": {"text": "no phrase column"}})
    assert status == 400 and "phrase" in body["error"]["message"]


# ---------------------------------------------------------------------------------------------- bad requests

BAD = [
    ("/v1/chat/completions", b"{not json", 400, None),
    ("/v1/chat/completions", b"[1, 2]", 400, None),
    ("/v1/chat/completions", {"model": NAME}, 400, "messages"),
    ("/v1/chat/completions", {"model": NAME, "messages": "hi"}, 400, "messages"),
    (
        "/v1/chat/completions",
        {"model": NAME, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
        400,
        "temperature",
    ),
    (
        "/v1/chat/completions",
        {"model": NAME, "messages": [{"role": "user", "content": "x"}], "n": 2},
        400,
        "n",
    ),
    ("/v1/completions", {"model": NAME, "prompt": "x", "max_tokens": 9000}, 400, "max_tokens"),
    ("/v1/completions", {"model": NAME, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"model": NAME, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/completions", {"model": NAME, "prompt": "x", "logit_bias": {"x": 1}}, 400, "logit_bias"),
    ("/v1/completions", {"model": NAME, "prompt": [5] * 8190, "max_tokens": 10}, 400, "max_tokens"),
    ("/v1/completions", {"model": NAME, "prompt": [10**6]}, 400, "prompt"),
    ("/v1/completions", {"model": NAME, "prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/completions", {"model": "other", "prompt": "x"}, 404, "model"),
    ("/v1/completions", {"model": f"{NAME}:nope", "prompt": "x"}, 404, "model"),
    ("/v1/completions", b'{"model": "int4", "prompt": "' + b"x" * (1 << 20) + b'"}', 400, None),
    ("/v1/nothing", {}, 404, None),
]


@pytest.mark.parametrize("path,body,status,param", BAD, ids=range(len(BAD)))
def test_bad_request_is_4xx_with_an_openai_error(server, path, body, status, param):
    got, answer, _ = post(server, path, body)
    assert got == status, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"} and answer["error"]["message"]
    if param:
        assert answer["error"]["param"] == param
    assert health(server)["status"] == "ok"


def test_limits_are_named(server):
    _, answer, _ = post(server, "/v1/completions", {"model": NAME, "prompt": "x", "max_tokens": 9000})
    assert "--max-tokens-cap" in answer["error"]["message"]
    _, answer, _ = post(server, "/v1/completions", {"model": NAME, "prompt": [5] * 8190, "max_tokens": 10})
    assert answer["error"]["code"] == "context_length_exceeded" and "8192" in answer["error"]["message"]
    _, answer, _ = post(server, "/v1/completions", b'{"prompt": "' + b"x" * (1 << 20) + b'"}')
    assert answer["error"]["code"] == "body_too_large" and "--max-body-bytes" in answer["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client(server).completions.create(model="other", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client(server).chat.completions.create(model=NAME, messages=[{"role": "user", "content": "x"}], n=3)


def test_hugging_face_folder(model):
    hf = model.parent / "hf"  # the folder the int4 model was exported from
    ModelMeta(template=TEMPLATE, answer_column="tone", labels=LABELS).save(hf)
    served = Server(hf)
    try:
        args = dict(model="hf", messages=[{"role": "user", "content": "hi"}], max_tokens=12, temperature=0)
        whole = client(served).chat.completions.create(**args, logit_bias=no_eos(model))
        streamed = client(served).chat.completions.create(**args, logit_bias=no_eos(model), stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == whole.choices[0].message.content
        assert whole.usage.completion_tokens == 12
        status, body, _ = post(
            served, "/v1/slimtune/predict", {"input": {"phrase": "I miss my old friends."}}
        )
        assert status == 200 and body["label"] in LABELS
    finally:
        assert served.stop()[0] == 0


def test_api_key(model):
    keyed = Server(model, env={"SLIMTUNE_API_KEY": "s3cret"})
    try:
        with pytest.raises(openai.AuthenticationError):
            client(keyed, "wrong").models.list()
        status, answer, _ = post(keyed, "/v1/completions", {"model": NAME, "prompt": "x"})
        assert status == 401 and answer["error"]["code"] == "invalid_api_key"
        assert client(keyed, "s3cret").completions.create(model=NAME, prompt="x", max_tokens=2).usage
        with urllib.request.urlopen(keyed.url + "/", timeout=10) as page:  # the page asks for the key itself
            assert page.status == 200
    finally:
        code, log = keyed.stop()
    assert "s3cret" not in log


# ---------------------------------------------------------------------------------------------- load and exit


def test_client_leaving_mid_stream_frees_its_slot(narrow, model):
    long = {"model": NAME, "prompt": "Wow", "max_tokens": 8000, "logit_bias": no_eos(model)}
    connection, response = open_stream(narrow, long)
    assert response.status == 200
    for _ in range(3):
        assert response.readline().startswith(b"data: ")
        response.readline()
    assert health(narrow)["running"] == 1
    connection.close()  # the request would run ~10 s more; the 3 s time limit would end it too
    assert wait_for(lambda: health(narrow)["running"] == 0, 1.5) < 1.5
    status, body, _ = post(narrow, "/v1/completions", {"model": NAME, "prompt": "x", "max_tokens": 2})
    assert status == 200, body


def test_full_queue_is_429_with_retry_after(narrow, model):
    long = {"model": NAME, "prompt": "Wow", "max_tokens": 8000, "logit_bias": no_eos(model)}
    connection, response = open_stream(narrow, long)
    assert response.status == 200
    status, body, headers = post(narrow, "/v1/completions", {"model": NAME, "prompt": "x", "max_tokens": 2})
    assert status == 429 and body["error"]["code"] == "queue_full"
    assert int(headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError):
        client(narrow).completions.create(model=NAME, prompt="x", max_tokens=2)
    connection.close()
    wait_for(lambda: health(narrow)["running"] == 0, 1.5)


def test_request_time_limit(model):
    # half a second: an 8000-token answer of the tiny model takes ~3 s on an idle machine, much longer under load
    hasty = Server(model, "--parallel", "1", "--request-timeout", "0.5", "--max-tokens-cap", "8000")
    try:
        long = {"model": NAME, "prompt": "Wow", "max_tokens": 8000, "logit_bias": no_eos(model)}
        start = time.monotonic()
        status, body, _ = post(hasty, "/v1/completions", long)
        assert status == 504 and "--request-timeout" in body["error"]["message"]
        assert 0.4 < time.monotonic() - start < 5
        connection, response = open_stream(hasty, long)
        events = response.read().decode().strip().split("\n\n")
        connection.close()
        assert json.loads(events[-1][6:])["error"]["code"] == "timeout"
        wait_for(lambda: health(hasty)["running"] == 0, 1.5)
    finally:
        hasty.stop()


def test_sigterm_finishes_in_flight_requests_and_refuses_new(model):
    # the in-flight answer is streamed, so the signal goes out once its first token has arrived: polling /health
    # for "running" could miss a request that a fast machine finishes in about a second
    started = Server(model, "--max-tokens-cap", "8000")
    bias = no_eos(model)
    first_token = threading.Event()
    results = {"chunks": []}

    def in_flight():
        stream = client(started).completions.create(
            model=NAME,
            prompt="Wow",
            max_tokens=8000,
            temperature=0,
            logit_bias=bias,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            results["chunks"].append(chunk)
            first_token.set()

    thread = threading.Thread(target=in_flight)
    thread.start()
    assert first_token.wait(30), "no first token within 30 s"
    started.process.send_signal(__import__("signal").SIGTERM)
    time.sleep(0.3)
    with pytest.raises((openai.APIConnectionError, openai.InternalServerError)):
        client(started).completions.create(model=NAME, prompt="x", max_tokens=2)
    thread.join(60)
    code, log = started.stop()
    chunks = results["chunks"]
    assert chunks[-1].usage.completion_tokens == 8000
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert code == 0, log
    assert "draining" in log
