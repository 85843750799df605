"""Batching in `slimtune serve`: requests that arrive together are generated as one batch of ONNX Runtime
GenAI's generator, each row sampled with its own settings and streamed to its own client.

First in-process (decode.generate_batch against decode.generate, one request at a time: the same tokens, at
temperature 0 and with a seed), then through a real server on 127.0.0.1 with the official `openai` client:
concurrent streamed requests answered as when sent alone, in one batch; a client leaving a batch gives its
slot back at once while the other rows go on. The model is tests/test_serve.py's: the tiny Llama exported to
int4 (random weights: answers are compared with each other, never with fixed strings).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

import pytest

from tests.serve_helpers import Server, build_int4, generator_busy, health, tiny_long_context

openai = pytest.importorskip("openai")
pytest.importorskip("onnxruntime_genai")

NAME = "int4"
PROMPTS = [
    "Hello there",
    "### Text: I miss my old friends.\n### The tone is:\n",
    "The quick brown fox",
    "Wow",
]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("batching")
    return build_int4(tiny_long_context(root / "hf"), root / NAME)


@pytest.fixture(scope="module")
def served(model):
    from slimtune.serve.decode import ServedModel

    return ServedModel(model)


def eos_ban(served) -> dict[int, float]:
    return {token: -100.0 for token in served.eos_token_ids}


def test_a_batch_gives_each_row_its_answer_alone(served):
    """Rows of differing prompt lengths, max_tokens, sampling, seeds and stop strings: each row's outcome is
    what `generate` gives for it alone."""
    from slimtune.serve.decode import Row, Sampling, generate, generate_batch

    ban = eos_ban(served)
    settings = [
        Sampling(max_tokens=24, temperature=0, logit_bias=ban),
        Sampling(max_tokens=9, temperature=0, logit_bias=ban),
        Sampling(max_tokens=30, temperature=1.0, top_p=0.9, top_k=40, seed=7, logit_bias=ban),
        Sampling(max_tokens=20, temperature=0.7, seed=11),
    ]
    prompts = [served.encode(p) for p in PROMPTS]
    alone = [generate(served, p, s) for p, s in zip(prompts, settings, strict=True)]
    # a stop string that the first answer meets part-way
    text = alone[0].text
    stop = next(text[i : i + 2] for i in range(4, len(text) - 2) if text[i : i + 2].strip())
    settings[0].stop = [stop]
    alone[0] = generate(served, prompts[0], settings[0])
    assert alone[0].finish_reason == "stop" and alone[0].text == text[: text.index(stop)]

    pieces: dict[int, list[str]] = {i: [] for i in range(4)}
    ended: dict[int, object] = {}
    rows = [
        Row(p, s, emit=pieces[i].append, cancel=threading.Event())
        for i, (p, s) in enumerate(zip(prompts, settings, strict=True))
    ]
    order = []

    def finished(i, outcome):
        order.append(i)
        ended[i] = outcome

    generate_batch(served, rows, finished)
    assert sorted(ended) == [0, 1, 2, 3]
    for i in range(4):
        assert ended[i] == alone[i], i
        assert "".join(pieces[i]) == alone[i].text
    assert order.index(1) < order.index(2)  # a short row is answered when it ends, not with the batch


def test_a_cancelled_row_ends_and_the_others_go_on(served):
    from slimtune.serve.decode import Row, Sampling, generate, generate_batch

    ban = eos_ban(served)
    prompts = [served.encode(p) for p in PROMPTS[:3]]
    settings = Sampling(max_tokens=60, temperature=0, logit_bias=ban)
    cancel = threading.Event()
    ended = {}

    def emit_and_leave(piece):  # the client of row 1 leaves after its first piece of text
        cancel.set()

    rows = [Row(prompts[0], settings), Row(prompts[1], settings, emit=emit_and_leave, cancel=cancel)]
    rows.append(Row(prompts[2], settings))
    generate_batch(served, rows, lambda i, outcome: ended.setdefault(i, outcome))
    assert ended[1].finish_reason == "cancelled" and ended[1].completion_tokens < 5
    for i in (0, 2):
        assert ended[i] == generate(served, prompts[i], settings)


# ---------------------------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def server(model):
    # one generator (--parallel = --batch-size): requests that wait for it start together, as one batch
    started = Server(
        model, "--parallel", "8", "--batch-size", "8", "--batch-wait", "200", "--max-tokens-cap", "8000"
    )
    yield started
    started.stop()


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def long_request(served) -> dict:
    """A completion of 8000 tokens, EOS banned: it runs for seconds."""
    ban = {str(t): -100 for t in served.eos_token_ids}
    return {"model": NAME, "prompt": "Wow", "max_tokens": 8000, "temperature": 0, "logit_bias": ban}


def test_concurrent_streams_share_a_batch_and_match_their_answers_alone(server, served):
    ban = {str(t): -100 for t in served.eos_token_ids}
    args = [
        dict(model=NAME, prompt=p, max_tokens=16 + 4 * i, temperature=0, logit_bias=ban)
        for i, p in enumerate(PROMPTS)
    ]
    args[3].update(temperature=1.0, seed=5)  # a seeded, sampled row among greedy ones
    alone = [client(server).completions.create(**a).choices[0].text for a in args]
    assert health(server)["largest_batch"] <= 1  # one after another, a lone client's request never waits
    streamed: dict[int, str] = {}
    usage: dict[int, int] = {}

    def ask(i: int) -> None:
        chunks = list(
            client(server).completions.create(**args[i], stream=True, stream_options={"include_usage": True})
        )
        streamed[i] = "".join(c.choices[0].text for c in chunks if c.choices)
        usage[i] = chunks[-1].usage.completion_tokens

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    with generator_busy(server, long_request(served), then_running=5):
        for thread in threads:
            thread.start()
    for thread in threads:
        thread.join(120)
    assert health(server)["largest_batch"] == 4
    assert [streamed[i] for i in range(4)] == alone
    assert [usage[i] for i in range(4)] == [16, 20, 24, 28]


def open_stream(server: Server, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = json.dumps({**body, "stream": True})
    connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    return connection, connection.getresponse()


def wait_running(server: Server, running: int, seconds: float) -> None:
    start = time.monotonic()
    while health(server)["running"] != running:
        assert time.monotonic() - start < seconds, f"not {running} running within {seconds} s"
        time.sleep(0.05)


def test_a_client_leaving_a_batch_frees_its_slot_at_once(server, served):
    long = long_request(served)
    with generator_busy(server, long, then_running=3):
        streams = [open_stream(server, {**long, "prompt": p}) for p in PROMPTS[:2]]
    for _, response in streams:
        assert response.status == 200
        assert response.readline().startswith(b"data: ")
    wait_running(server, 2, 1.5)  # the busy one left: the two share the next batch
    assert health(server)["largest_batch"] >= 2
    streams[0][0].close()  # its row would run thousands of tokens more
    wait_running(server, 1, 1.5)
    before = len(streams[1][1].read1(1 << 16))  # the other row goes on streaming
    time.sleep(0.3)
    assert len(streams[1][1].read1(1 << 16)) > 0 and before > 0
    streams[1][0].close()
    wait_running(server, 0, 1.5)
    # every row has ended, so the generator is free: a new request is answered at once, not after 8000 tokens
    start = time.monotonic()
    reply = client(server).completions.create(model=NAME, prompt="x", max_tokens=3, temperature=0)
    assert reply.usage.completion_tokens >= 1
    assert time.monotonic() - start < 10


def test_a_batch_keeps_the_queue_bound_and_each_rows_time_limit(model, served):
    """Three slots, no queue, a 1.5 s limit: in a batch, a short request is answered in full while its long
    neighbour (8000 tokens, several seconds) hits the limit; with every slot taken, one more request is 429."""
    bounded = Server(
        model,
        "--parallel", "3", "--batch-size", "3", "--queue-size", "0",
        "--request-timeout", "1.5", "--batch-wait", "200", "--max-tokens-cap", "8000",
    )  # fmt: skip
    long = long_request(served)
    try:
        answers = {}
        ask = threading.Thread(
            target=lambda: answers.setdefault(
                "short",
                client(bounded).completions.create(
                    model=NAME,
                    prompt="Hello there",
                    max_tokens=4,
                    temperature=0,
                    logit_bias=long["logit_bias"],
                ),
            )
        )
        with generator_busy(bounded, long, then_running=3):
            connection, response = open_stream(bounded, long)
            ask.start()
        ask.join(60)
        assert answers["short"].usage.completion_tokens == 4
        assert answers["short"].choices[0].finish_reason == "length"
        assert health(bounded)["largest_batch"] == 2
        events = response.read().decode().strip().split("\n\n")
        connection.close()
        assert json.loads(events[-1][6:])["error"]["code"] == "timeout"
        wait_running(bounded, 0, 1.5)

        streams = [open_stream(bounded, long) for _ in range(3)]
        with pytest.raises(openai.RateLimitError):
            client(bounded).completions.create(model=NAME, prompt="x", max_tokens=2)
        for connection, response in streams:
            events = response.read().decode().strip().split("\n\n")
            connection.close()
            assert json.loads(events[-1][6:])["error"]["code"] == "timeout"
        wait_running(bounded, 0, 1.5)
    finally:
        assert bounded.stop()[0] == 0
