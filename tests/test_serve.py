"""``mmtransfer serve``: the official openai client over real HTTP, token streaming, dynamic batching, and bad
requests answered 4xx while the server keeps serving. One tiny Llama-decoder model, served once per module."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch

pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the client tests need the openai package (test extra)")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import mmtransfer  # noqa: E402
from mmtransfer.bundled import ASSETS  # noqa: E402
from mmtransfer.cli import build_parser, main  # noqa: E402
from mmtransfer.serve import ServeSettings, background, create_app  # noqa: E402
from mmtransfer.serve.batcher import BatchStreamer, Job  # noqa: E402
from mmtransfer.serve.protocol import GenSettings  # noqa: E402
from tests.tiny_models import tiny_model_config  # noqa: E402

NAME = "tiny-llama"
IMAGE, AUDIO = ASSETS / "sample.png", ASSETS / "sample.wav"


class Served(NamedTuple):
    url: str
    app: Any
    reference: mmtransfer.MultimodalGPT  # a second copy of the served model, for expected answers


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("serve") / "model"
    mmtransfer.build_model(tiny_model_config("llama")).save_pretrained(directory)
    settings = ServeSettings(NAME, batch_wait_ms=50, max_body_mb=1, media_dir=ASSETS)
    app = create_app(mmtransfer.load(directory), settings)
    with background(app) as url:
        yield Served(url, app, mmtransfer.load(directory))


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def wav_part(path: Path) -> dict[str, Any]:
    data = base64.b64encode(path.read_bytes()).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def ours(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The mmtransfer conversation an OpenAI user turn of ``parts`` stands for (media as the sample files)."""
    out = []
    for p in parts:
        if p["type"] == "image_url":
            p = {"type": "image", "image": str(IMAGE)}
        elif p["type"] == "input_audio":
            p = {"type": "audio", "audio": str(AUDIO)}
        out.append(p)
    return [{"role": "user", "content": out}]


def body(parts: list[dict[str, Any]], max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {"model": NAME, "messages": [{"role": "user", "content": parts}], "max_tokens": max_tokens,
            "temperature": 0, **extra}


def post(served: Served, payload: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{served.url}/v1/chat/completions", json=payload, timeout=120)


def streamed(served: Served, payload: dict[str, Any]) -> tuple[str, list[str]]:
    """(the text, the raw ``data:`` lines) of a streamed answer."""
    lines, pieces = [], []
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=payload | {"stream": True},
                      timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                lines.append(line)
                if line != "data: [DONE]":
                    pieces.append(httpx.Response(200, content=line[6:]).json()["choices"][0]["delta"].get("content"))
    return "".join(p for p in pieces if p), lines


def answer(served: Served, payload: dict[str, Any]) -> str:
    """The text of one request, streamed or not."""
    if payload.get("stream"):
        return streamed(served, payload)[0]
    response = post(served, payload)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def stats(served: Served) -> dict[str, Any]:
    return httpx.get(f"{served.url}/health").json()


def client(served: Served) -> Any:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)


def test_openai_client_with_an_image_and_with_audio(served: Served) -> None:
    api = client(served)
    assert [m.id for m in api.models.list().data] == [NAME]
    for parts in ([{"type": "image_url", "image_url": {"url": data_url(IMAGE)}}, text("what is this?")],
                  [wav_part(AUDIO), text("transcribe it")]):
        out = api.chat.completions.create(model=NAME, messages=body(parts)["messages"], max_tokens=8,
                                          temperature=0)
        assert out.choices[0].message.content == served.reference.chat(ours(parts), max_new_tokens=8)
        assert out.choices[0].finish_reason in ("stop", "length") and out.model == NAME


def test_stream_gives_the_text_of_the_plain_answer_token_by_token(served: Served) -> None:
    api = client(served)
    for parts in ([text("tell me about it")], [{"type": "image_url", "image_url": {"url": data_url(IMAGE)}},
                                               text("and this?")]):
        plain = api.chat.completions.create(model=NAME, messages=body(parts)["messages"], max_tokens=12,
                                            temperature=0)
        chunks = list(api.chat.completions.create(model=NAME, messages=body(parts)["messages"], max_tokens=12,
                                                  temperature=0, stream=True))
        pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
        assert "".join(pieces) == plain.choices[0].message.content
        assert len(pieces) > 2  # the text arrived in pieces as it was generated
        assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
        assert {c.object for c in chunks} == {"chat.completion.chunk"}
    _, lines = streamed(served, body([text("hello")]))
    assert lines[-1] == "data: [DONE]"


def concurrent(served: Served, payloads: list[dict[str, Any]], send: Any = answer) -> list[Any]:
    """Send all payloads at once (a barrier lines the threads up)."""
    barrier = threading.Barrier(len(payloads))

    def one(payload: dict[str, Any]) -> Any:
        barrier.wait()
        return send(served, payload)

    with ThreadPoolExecutor(len(payloads)) as pool:
        return list(pool.map(one, payloads))


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(served: Served) -> None:
    words = ["hi", "what is this", "a cat", "tell me a story please", "zzz", "1 2 3", "the sky", "why"]
    payloads = []
    for i in range(16):  # text-only and image rows, two lengths, half streamed
        parts = [text(words[i % 8])] if i % 3 else [{"type": "image_url", "image_url": {"url": data_url(IMAGE)}},
                                                    text(words[i % 8])]
        payloads.append(body(parts, max_tokens=6 + 2 * (i % 2), stream=i % 4 < 2))
    expected = [served.reference.chat(ours(p["messages"][0]["content"]), max_new_tokens=p["max_tokens"])
                for p in payloads]
    assert [answer(served, p) for p in payloads] == expected  # alone, one after another
    before = stats(served)
    assert concurrent(served, payloads) == expected
    after = stats(served)
    assert after["requests"] - before["requests"] == 16
    assert 2 <= after["generate_calls"] - before["generate_calls"] <= 4  # 2 settings: a few batches, not 16
    assert len(set(expected)) > 8  # the rows' answers differ, so a mix-up would show


def test_a_row_too_long_for_the_context_fails_alone_in_its_batch(served: Served) -> None:
    good = [body([text(w)]) for w in ("hi", "a cat", "why")]
    long = body([text("tell me a story " * 40)])
    responses = concurrent(served, [*good, long], post)
    assert [r.status_code for r in responses] == [200, 200, 200, 400]
    assert "exceeds the decoder's context of 256" in responses[-1].json()["error"]["message"]
    assert [r.json()["choices"][0]["message"]["content"] for r in responses[:3]] == [
        served.reference.chat(ours(p["messages"][0]["content"]), max_new_tokens=8) for p in good]


GOOD = body([text("hi")])
BAD_B64 = "data:image/png;base64,@@not base64@@"
NOT_AN_IMAGE = "data:image/png;base64," + base64.b64encode(b"this is not a png").decode()
BAD_CASES = {
    "unknown model": (GOOD | {"model": "gpt-4o"}, 404, "does not exist"),
    "malformed base64": (body([{"type": "image_url", "image_url": {"url": BAD_B64}}]), 400, "not valid base64"),
    "image that does not decode": (body([{"type": "image_url", "image_url": {"url": NOT_AN_IMAGE}}]), 400,
                                   "image does not decode"),
    "audio that does not decode": (body([{"type": "input_audio", "input_audio": {
        "data": base64.b64encode(b"RIFF nonsense").decode(), "format": "wav"}}]), 400, "audio does not decode"),
    "audio format": (body([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "aac"}}]), 400,
                     "is not one of"),
    "prompt + max_tokens over the context": (body([text("hi")], max_tokens=300), 400,
                                             "exceeds the decoder's context of 256"),
    "messages not a list": (GOOD | {"messages": "hello"}, 400, "messages: Input should be a valid list"),
    "no messages": (GOOD | {"messages": []}, 400, "non-empty list"),
    "message without content": (GOOD | {"messages": [{"role": "user"}]}, 400, "'role' and 'content'"),
    "unknown role": (GOOD | {"messages": [{"role": "robot", "content": "hi"}]}, 400, "unknown role"),
    "assistant turn last": (GOOD | {"messages": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "yo"}]}, 400, "last message"),
    "unknown part type": (body([{"type": "video_url", "video_url": "x"}]), 400, "unknown part type 'video_url'"),
    "file outside the media directory": (body([{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]), 400,
                                         "outside the server's media directory"),
    "http URL": (body([{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]), 400,
                 "fetches no URLs"),
    "max_tokens 0": (body([text("hi")], max_tokens=0), 400, "max_tokens"),
    "n=2": (GOOD | {"n": 2}, 400, "only n=1"),
    "tools": (GOOD | {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, 400,
              "tool and function calling are not supported"),
    "five stop sequences": (GOOD | {"stop": list("abcde")}, 400, "at most 4 stop sequences"),
    "an empty stop sequence": (GOOD | {"stop": ""}, 400, "must not be empty"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_a_bad_request_gets_4xx_saying_why_and_the_server_keeps_serving(served: Served, case: str) -> None:
    payload, status, message = BAD_CASES[case]
    for stream in (False, True):
        response = post(served, payload | {"stream": stream})
        assert response.status_code == status, response.text
        assert message in response.json()["error"]["message"]
    assert post(served, GOOD).status_code == 200


def test_a_body_over_the_limit_gets_413_declared_or_chunked(served: Served) -> None:
    big = body([text("x" * (3 * 2**19))])  # 1.5 MB, over the fixture's 1 MB
    response = post(served, big)
    assert response.status_code == 413 and "limit of 1 MB" in response.json()["error"]["message"]
    chunked = httpx.post(f"{served.url}/v1/chat/completions", content=iter([b"{" + b" " * 2**19] * 3), timeout=60)
    assert chunked.status_code == 413
    malformed_json = httpx.post(f"{served.url}/v1/chat/completions", content=b'{"model": ',
                                headers={"content-type": "application/json"}, timeout=60)
    assert malformed_json.status_code == 400 and "not valid JSON" in malformed_json.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client(served).chat.completions.create(model="gpt-4o", messages=GOOD["messages"])
    assert post(served, GOOD).status_code == 200


def test_sampling_settings_reach_generate(served: Served) -> None:
    greedy = answer(served, body([text("hi")], max_tokens=16))
    sampled = [answer(served, body([text("hi")], max_tokens=16, temperature=1.5, top_p=0.95)) for _ in range(3)]
    assert any(s != greedy for s in sampled)


def test_local_files_only_under_the_media_directory(served: Served) -> None:
    parts = [{"type": "image_url", "image_url": {"url": IMAGE.name}}, text("what is this?")]
    assert answer(served, body(parts)) == served.reference.chat(ours(parts), max_new_tokens=8)
    app = create_app(served.reference, ServeSettings(NAME))  # no media directory: inline media only
    with TestClient(app) as http:
        response = http.post("/v1/chat/completions", json=body(parts))
        assert response.status_code == 400 and "reads no local files" in response.json()["error"]["message"]
        assert http.get("/health").json()["status"] == "ok"
        assert "<form" in http.get("/").text


def test_a_clip_for_a_model_without_an_audio_encoder_gets_400() -> None:
    cfg = {k: v for k, v in tiny_model_config().items() if not k.startswith("audio")}
    with TestClient(create_app(mmtransfer.build_model(cfg).eval(), ServeSettings(NAME))) as http:
        response = http.post("/v1/chat/completions", json=body([wav_part(AUDIO), text("hi")]))
        assert response.status_code == 400 and "no audio encoder" in response.json()["error"]["message"]
        assert http.post("/v1/chat/completions", json=GOOD).status_code == 200
        assert http.get("/health").json()["generate_calls"] == 1  # refused before it could spoil a batch


def test_batch_streamer_sends_stable_text_per_row_and_stops_rows_at_eos(served: Served) -> None:
    tok = served.reference.tokenizer
    ids = tok(" h\u00e9llo w\u00f6rld \u2603 ok", add_special_tokens=False)["input_ids"]  # split UTF-8 characters
    jobs = [Job([], GenSettings(8, False), stream=True), Job([], GenSettings(8, False))]
    events: list[tuple[int, Any]] = []
    streamer = BatchStreamer(jobs, tok, lambda job, event: events.append((jobs.index(job), event)))
    streamer.put(torch.zeros(2, 0, dtype=torch.long))  # the prompt, as generate hands it over
    for step, token in enumerate(ids):
        streamer.put(torch.tensor([token, 5 if step < 2 else tok.eos_token_id]))
    streamer.end()
    deltas = [event[1] for row, event in events if event[0] == "delta"]
    assert [row for row, event in events if event[0] == "delta"] == [0] * len(deltas)  # row 1 is not streamed
    assert "".join(deltas) == tok.decode(ids).strip() and not any("\ufffd" in d for d in deltas)
    assert len(deltas) > 5 and [event for _, event in events if event[0] == "start"] == [("start",)] * 2
    assert (streamer.finish_reason(0), streamer.finish_reason(1), streamer.ids[1]) == ("length", "stop", [5, 5])


def _prompt_positions(model: mmtransfer.MultimodalGPT, conversation: list[dict[str, Any]]) -> int:
    """The positions the decoder reads for ``conversation``'s prompt: its text and media tokens."""
    batch = model.processor([conversation], add_generation_prompt=True)
    _, mask, _, _ = model.embed(batch["input_ids"], batch["attention_mask"], image=batch.get("image"),
                                audio=batch.get("audio"))
    return int(mask.sum())


def test_usage_counts_prompt_positions_and_generated_tokens(served: Served) -> None:
    parts = [{"type": "image_url", "image_url": {"url": data_url(IMAGE)}}, wav_part(AUDIO), text("what is this?")]
    prompt = _prompt_positions(served.reference, ours(parts))
    out = client(served).chat.completions.create(model=NAME, messages=body(parts)["messages"], max_tokens=8,
                                                 temperature=0)
    generated = len(served.reference.tokenizer(out.choices[0].message.content)["input_ids"])
    done = 8 if out.choices[0].finish_reason == "length" else generated + 1  # + its EOS
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (
        prompt, done, prompt + done)
    assert prompt > len(served.reference.tokenizer("what is this?")["input_ids"]) + 2  # the media count too
    chunks = list(client(served).chat.completions.create(
        model=NAME, messages=body(parts)["messages"], max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == out.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    _, lines = streamed(served, body([text("hello")]))  # no stream_options: no usage chunk
    assert all('"usage"' not in line for line in lines)


def test_stop_sequences_end_the_answer_before_them(served: Served) -> None:
    parts = [text("tell me a long story")]
    plain = answer(served, body(parts, max_tokens=16))
    stops = [plain[i : i + 2] for i in range(4, len(plain) - 2) if plain[i : i + 2].isascii() and
             plain[i : i + 2].isalpha()]  # two letters past the answer's start
    assert stops, plain
    stop = stops[0]
    expected = plain[: plain.index(stop)].strip()
    response = post(served, body(parts, max_tokens=16, stop=[stop, "never-said"]))
    assert response.json()["choices"][0]["message"]["content"] == expected
    assert response.json()["choices"][0]["finish_reason"] == "stop"
    assert response.json()["usage"]["completion_tokens"] < 16
    text_streamed, lines = streamed(served, body(parts, max_tokens=16, stop=stop))
    assert text_streamed == expected and '"finish_reason": "stop"' in lines[-2]
    steps = BatchStreamer([Job([], GenSettings(16, False))], served.reference.tokenizer, lambda job, event: None)
    assert served.reference.chat(ours(parts), max_new_tokens=16, stop=[stop], streamer=steps) == expected
    assert len(steps.ids[0]) < 16  # generate itself ended at the stop string


def test_batch_streamer_holds_back_the_start_of_a_stop_string(served: Served) -> None:
    tok = served.reference.tokenizer
    ids = tok(" hello world ok", add_special_tokens=False)["input_ids"]
    jobs = [Job([], GenSettings(8, False, stop=("wor",)), stream=True)]
    events: list[Any] = []
    streamer = BatchStreamer(jobs, tok, lambda job, event: events.append(event))
    streamer.prompt([7])
    streamer.put(torch.zeros(1, 0, dtype=torch.long))
    for token in ids:
        streamer.put(torch.tensor([token]))
    streamer.end()
    deltas = [event[1] for event in events if event[0] == "delta"]
    assert "".join(deltas) == "hello" and streamer.finish_reason(0) == "stop"
    assert not any("w" in d for d in deltas)  # "w", "wo" were held back until they turned into the stop string
    generated = streamer.ids[0]
    assert streamer.usage(0) == {"prompt_tokens": 7, "completion_tokens": len(generated),
                                 "total_tokens": 7 + len(generated)}


def test_favicon_is_not_a_404(served: Served) -> None:
    assert httpx.get(f"{served.url}/favicon.ico").status_code == 204


def test_serve_command_binds_localhost_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["serve", "ckpt"])
    assert (args.host, args.port, args.batch_wait_ms, args.max_batch) == ("127.0.0.1", 8000, 5.0, 16)
    mmtransfer.build_model(tiny_model_config()).save_pretrained(tmp_path / "m")
    calls = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: calls.append((app, kwargs)))
    assert main(["serve", str(tmp_path / "m"), "--port", "8123", "--max-batch", "4"]) == 0
    (app, kwargs), = calls
    assert (kwargs["host"], kwargs["port"]) == ("127.0.0.1", 8123)
    assert (app.state.settings.model_name, app.state.settings.max_batch) == ("m", 4)
    mmtransfer.build_model(tiny_model_config()).save_pretrained(tmp_path / "my-run" / "final")
    assert main(["serve", str(tmp_path / "my-run" / "final")]) == 0
    assert calls[-1][0].state.settings.model_name == "my-run"  # a run's final/ is served as the run


def test_decode_errors_name_no_python_objects(served: Served) -> None:
    """A bad inline image or clip is named by where it is in the request, never by an in-memory file's repr."""
    for part in ({"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF nonsense").decode(),
                                                          "format": "wav"}},
                 {"type": "image_url", "image_url": {"url": "data:image/png;base64," +
                                                     base64.b64encode(b"not a png").decode()}}):
        message = post(served, body([part, text("hi")])).json()["error"]["message"]
        assert "does not decode" in message and "object at 0x" not in message and "BytesIO" not in message, message
