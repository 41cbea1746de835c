"""`specvlm serve` end to end: real server processes on 127.0.0.1 (free ports), the official `openai` client, the
bundled testbed pair. Greedy answers equal what `specvlm generate` gives for the same media and prompt, streamed or
not, speculative or target-only; every refusal is a 4xx in OpenAI's error shape and leaves the worker serving; the
queue, the timeout and client disconnects free the worker; temporary media files are removed.

Two servers start once per module (in parallel):
  spec  speculative (target + draft), continuous batching (the default --max-batch), local media allowed under the
        samples folder, 1 MB request limit
  base  target-only (--draft none), one request at a time (--max-batch 1), an API key, a queue of 1, a 6 s request
        timeout
"""

import base64
import contextlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import hypothesis
import openai
import pytest
import schemathesis
from PIL import Image

from specvlm.cli import main
from specvlm.inputs import load_video
from specvlm.serve.app import host_name
from specvlm.serve.errors import APIError
from specvlm.serve.media import local_file
from specvlm.serve.metrics import Metrics
from specvlm.serve.schema import Decoding, chat_turn, decoding, parse_request
from specvlm.serve.worker import partial_stop, stop_point
from specvlm.testbed.assets import SAMPLES_DIR, bundled_pair, sample_clips

pytestmark = pytest.mark.xdist_group("serve")  # one worker runs the module: its servers start once

MODEL = "testbed"
KEY = "sk-test-key"
TIMEOUT_S = 6
TARGET, DRAFT = bundled_pair("qwen2_5_vl")
CLIP = sample_clips(kind="caption")[0]["video"]
QUESTION = "Describe the video in detail."
VIDEO_TOKENS = 24
IMAGE_QUESTION = "What is in the picture?"
IMAGE_TOKENS = 12
# the testbed's weights are float16: logits of magnitude 8-16 are spaced 2**-7 apart, so the same logit computed in
# another kernel shape (a verification forward's positions at once vs one token a step) may land a spacing away
FP16_LOGIT_SPACING = 2**-7
LONG = dict(max_tokens=3000, extra_body={"ignore_eos": True})  # runs for long (30 s and more) unless stopped


class Server:
    """`specvlm serve --port 0` in its own process group, its log in a file, TMPDIR in a folder of its own."""

    def __init__(self, root: Path, *options: str):
        self.root, self.tmp = root, root / "tmp"
        self.tmp.mkdir(parents=True)
        self.log = root / "server.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "specvlm",
                    "serve",
                    "--target",
                    str(TARGET),
                    "--served-model-name",
                    MODEL,
                    "--port",
                    "0",
                    *options,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "TMPDIR": str(self.tmp), "OMP_NUM_THREADS": "1"},
            )
        self.url = None

    def wait_ready(self, timeout: float = 180) -> "Server":
        end = time.monotonic() + timeout
        while self.url is None:
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)/v1", self.log.read_text(errors="replace"))
            if found:
                self.url = found.group(1)
            elif self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"the server did not start:\n{self.log.read_text()[-3000:]}")
            else:
                time.sleep(0.2)
        while get(self.url + "/health")[0] != 200:
            time.sleep(0.1)
        return self

    def client(self, api_key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=120)

    def metric(self, name: str) -> float:
        text = get(self.url + "/metrics")[1].decode()
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    return _http(urllib.request.Request(url, headers=headers or {}))


def post(url: str, body, headers: dict | None = None) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return _http(
        urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    )


def _http(request) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def data_url(path, media_type: str) -> str:
    return f"data:{media_type};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def user(text: str, *media: tuple[str, str]) -> list[dict]:
    parts = [{"type": f"{kind}_url", f"{kind}_url": {"url": url}} for kind, url in media]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def cli_generate(*argv) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["generate", "--target", str(TARGET), "--draft", str(DRAFT), "--json", *map(str, argv)]) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    started = [
        Server(
            root / "spec",
            "--draft",
            str(DRAFT),
            "--allowed-local-media-path",
            str(SAMPLES_DIR),
            "--max-request-bytes",
            str(1 << 20),
            "--max-queue",
            "32",
        ),
        Server(
            root / "base",
            "--draft",
            "none",
            "--api-key",
            KEY,
            "--max-queue",
            "1",
            "--max-batch",
            "1",
            "--request-timeout",
            str(TIMEOUT_S),
            "--allowed-local-media-path",
            str(SAMPLES_DIR),
        ),
    ]
    try:
        yield {"spec": started[0], "base": started[1]}
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("picture") / "frame.png"
    Image.fromarray(load_video(CLIP, num_frames=1).frames[0]).save(path)
    return path


@pytest.fixture(scope="module")
def expected(servers, picture):
    """What `specvlm generate --json` answers (computed while the servers start)."""
    return {
        "video": cli_generate("--video", CLIP, "--prompt", QUESTION, "--max-new-tokens", VIDEO_TOKENS),
        "image": cli_generate("--image", picture, "--prompt", IMAGE_QUESTION, "--max-new-tokens", IMAGE_TOKENS),
    }


@pytest.fixture(scope="module")
def spec(servers, expected):
    return servers["spec"].wait_ready()


@pytest.fixture(scope="module")
def base(servers, expected):
    return servers["base"].wait_ready()


VIDEO = user(QUESTION, ("video", "file://" + CLIP))


# ---- answers ---------------------------------------------------------------------------------------------------


def test_models_health_and_unknown_routes(spec):
    assert [m.id for m in spec.client().models.list()] == [MODEL]
    assert spec.client().models.retrieve(MODEL).id == MODEL
    assert json.loads(get(spec.url + "/health")[1]) == {"status": "ok"}
    assert json.loads(get(spec.url + "/ready")[1]) == {"status": "ready"}
    status, body = get(spec.url + "/v1/nothing")
    assert status == 404 and set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_greedy_answer_equals_generate(spec, expected):
    video = expected["video"]
    messages = user(QUESTION, ("video", data_url(CLIP, "video/mp4")))
    out = spec.client().chat.completions.create(model=MODEL, messages=messages, max_tokens=VIDEO_TOKENS, temperature=0)
    assert out.choices[0].message.content == video["text"]
    assert out.choices[0].finish_reason == ("stop" if len(video["token_ids"]) < VIDEO_TOKENS else "length")
    assert out.usage.completion_tokens == len(video["token_ids"])
    assert out.usage.prompt_tokens == video["inputs"]["prompt_tokens"]
    stats = out.model_extra["specvlm"]
    assert stats["mode"] == "speculative" and stats["rounds"] >= 1 and stats["accepted_tokens"] > 0
    assert stats["tau"] == pytest.approx(stats["accepted_tokens"] / stats["rounds"])
    tau_count = spec.metric("specvlm_tau_count")
    one = spec.client().chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    assert one.usage.completion_tokens == 1 and one.model_extra["specvlm"]["tau"] is None  # no round: no τ
    assert spec.metric("specvlm_tau_count") == tau_count  # and no τ = 0 in the histogram


def test_streamed_answer_equals_generate(spec, expected):
    chunks = list(
        spec.client().chat.completions.create(
            model=MODEL, messages=VIDEO, max_tokens=VIDEO_TOKENS, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected["video"]["text"]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # streamed, not one piece
    finish, usage = chunks[-2], chunks[-1]
    assert finish.choices[0].finish_reason in ("stop", "length") and not usage.choices
    assert usage.usage.completion_tokens == len(expected["video"]["token_ids"])
    assert usage.model_extra["specvlm"]["acceptance_by_position"][0] > 0
    status, raw = post(spec.url + "/v1/chat/completions", dict(model=MODEL, messages=VIDEO, max_tokens=4, stream=True))
    events = raw.decode().strip().split("\n\n")
    assert status == 200 and events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    assert "usage" not in json.loads(events[-2][6:]) and "specvlm" in json.loads(events[-2][6:])


def test_image_part_equals_generate(spec, expected, picture):
    messages = user(IMAGE_QUESTION, ("image", data_url(picture, "image/png")))
    out = spec.client().chat.completions.create(model=MODEL, messages=messages, max_tokens=IMAGE_TOKENS)
    assert out.choices[0].message.content == expected["image"]["text"]
    assert out.usage.prompt_tokens == expected["image"]["inputs"]["prompt_tokens"]


def hf_generate(hf_messages: list[dict], picture, max_new_tokens: int, **options):
    """`target.generate` on a conversation as HF's own processor renders it: (its output, the prompt length,
    the processor)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from specvlm.inputs import load_image, load_processor

    processor = load_processor(str(TARGET))
    text = processor.apply_chat_template(hf_messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[[load_image(str(picture))]], return_tensors="pt")
    target = AutoModelForImageTextToText.from_pretrained(TARGET).eval()
    with torch.no_grad():
        out = target.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, **options)
    return out, inputs["input_ids"].shape[1], processor


def test_conversations_are_answered_as_the_target_answers_its_chat_template(spec, picture):
    """What chat front-ends send: a system message, a user turn with an image, the assistant's earlier answer and a
    follow-up question. The answer is `target.generate` on that conversation as HF's processor renders it."""
    conversation = [
        {"role": "system", "content": "You answer questions about pictures."},
        *user(IMAGE_QUESTION, ("image", data_url(picture, "image/png"))),
        {"role": "assistant", "content": [{"type": "text", "text": "Shapes."}]},
        {"role": "developer", "content": "Be precise."},
        {"role": "user", "content": "Which colours?"},
    ]
    out = spec.client().chat.completions.create(model=MODEL, messages=conversation, max_tokens=IMAGE_TOKENS)
    hf_messages = [
        {"role": "system", "content": [{"type": "text", "text": "You answer questions about pictures."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": IMAGE_QUESTION}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Shapes."}]},
        {"role": "system", "content": [{"type": "text", "text": "Be precise."}]},
        {"role": "user", "content": [{"type": "text", "text": "Which colours?"}]},
    ]
    sequences, prompt_length, processor = hf_generate(hf_messages, picture, IMAGE_TOKENS)
    rendered = processor.apply_chat_template(hf_messages, add_generation_prompt=True, tokenize=False)
    assert "Shapes." in rendered and "Be precise." in rendered
    ids = sequences[0, prompt_length:]
    assert out.choices[0].message.content == processor.tokenizer.decode(ids, skip_special_tokens=True)
    assert out.usage.prompt_tokens == prompt_length


def test_logprobs_are_the_targets_own(spec, picture):
    """logprobs / top_logprobs: per answer token, log-softmax of the target's logits where `target.generate` chose
    it (HF's output_logits), with its most likely alternatives, streamed or not; a stop string ends them with the
    token that completed it."""
    import torch

    system = "You answer questions about pictures."
    conversation = [
        {"role": "system", "content": system},
        *user(IMAGE_QUESTION, ("image", data_url(picture, "image/png"))),
    ]
    hf_messages = [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": IMAGE_QUESTION}]},
    ]
    out, prompt_length, processor = hf_generate(
        hf_messages, picture, IMAGE_TOKENS, output_logits=True, return_dict_in_generate=True
    )
    ids = out.sequences[0, prompt_length:].tolist()
    logp = torch.cat(out.logits).float().log_softmax(-1)  # (new tokens, V)
    client = spec.client()
    asked = dict(model=MODEL, messages=conversation, max_tokens=IMAGE_TOKENS, logprobs=True, top_logprobs=3)
    answer = client.chat.completions.create(**asked)
    entries = answer.choices[0].logprobs.content
    assert len(entries) == len(ids) == answer.usage.completion_tokens
    for step, (entry, token) in enumerate(zip(entries, ids)):
        assert entry.token == processor.tokenizer.decode([token]) and entry.bytes == list(entry.token.encode())
        assert entry.logprob == pytest.approx(logp[step, token].item(), abs=FP16_LOGIT_SPACING)
        best = logp[step].topk(3)
        assert [t.token for t in entry.top_logprobs] == processor.tokenizer.batch_decode(best.indices[:, None])
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(best.values.tolist(), abs=FP16_LOGIT_SPACING)
    streamed = [c for c in client.chat.completions.create(**asked, stream=True) if c.choices and c.choices[0].logprobs]
    assert [e.token for c in streamed for e in c.choices[0].logprobs.content] == [e.token for e in entries]

    # a stop string the answer completes at its second token or later (the bundled pair answers this one in a word)
    stop = processor.tokenizer.decode(ids[1:2], skip_special_tokens=True)
    assert stop.strip() and stop in answer.choices[0].message.content
    through = next(
        n for n in range(1, len(ids) + 1) if stop in processor.tokenizer.decode(ids[:n], skip_special_tokens=True)
    )
    for stream in (False, True):
        reply = client.chat.completions.create(
            **asked, stop=stop, stream=stream, stream_options={"include_usage": True} if stream else None
        )
        chunks = list(reply) if stream else [reply]
        got = [e.token for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
        assert got == [e.token for e in entries[:through]]
        assert next(c.usage for c in chunks if c.usage).completion_tokens == through
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model=MODEL, messages=conversation, max_tokens=2, top_logprobs=2)


def test_stop_string_cuts_the_answer(spec, expected):
    text = expected["video"]["text"]
    stop = text.split()[4]
    client = spec.client()
    out = client.chat.completions.create(model=MODEL, messages=VIDEO, max_tokens=VIDEO_TOKENS, stop=[stop, "zzz"])
    assert out.choices[0].message.content == text[: text.index(stop)]
    assert out.choices[0].finish_reason == "stop"
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=VIDEO, max_tokens=VIDEO_TOKENS, stop=stop, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text[: text.index(stop)]


def test_sampling_is_reproducible_per_seed(spec):
    client = spec.client()
    answers = [
        client.chat.completions.create(model=MODEL, messages=VIDEO, max_tokens=12, temperature=1.0, top_p=0.9, seed=11)
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert answers[0] == answers[1] and answers[0]


def test_target_only_server_gives_the_same_greedy_answer(base, expected):
    out = base.client(KEY).chat.completions.create(
        model=MODEL, messages=user(QUESTION, ("video", data_url(CLIP, "video/mp4"))), max_tokens=VIDEO_TOKENS
    )
    assert out.choices[0].message.content == expected["video"]["text"]
    assert out.model_extra["specvlm"]["mode"] == "target-only"


# ---- refusals --------------------------------------------------------------------------------------------------


def bad_requests(allowed_outside: str) -> dict:
    """what is wrong -> (request body or raw bytes, status, a phrase the message contains)"""
    garbage = base64.b64encode(b"definitely not a video").decode()
    ok = dict(model=MODEL, max_tokens=4)
    bomb = io.BytesIO()  # 12000 x 12000 1-bit pixels: ~23 KiB of PNG, 412 MiB once decoded
    Image.new("1", (12000, 12000)).save(bomb, format="PNG")
    bomb_url = "data:image/png;base64," + base64.b64encode(bomb.getvalue()).decode()
    return {
        "nested JSON": (b"[" * 100_000, 400, "nested too deeply"),
        "image bomb": ({**ok, "messages": user("Q", ("image", bomb_url))}, 400, "pixels, more than"),
        "too many images": (
            {**ok, "messages": user("Q", *[("image", "data:image/png;base64,AAAA")] * 17)},
            400,
            "16 at most",
        ),
        "bad base64": ({**ok, "messages": user("Q", ("image", "data:image/png;base64,@@@"))}, 400, "base64"),
        "undecodable image": (
            {**ok, "messages": user("Q", ("image", "data:image/png;base64," + garbage))},
            400,
            "cannot read image",
        ),
        "undecodable video": (
            {**ok, "messages": user("Q", ("video", "data:video/mp4;base64," + garbage))},
            400,
            "cannot read video",
        ),
        "wrong media type": (
            {**ok, "messages": user("Q", ("image", data_url(CLIP, "video/mp4")))},
            400,
            "unsupported image type",
        ),
        "remote URL": ({**ok, "messages": user("Q", ("video", "https://example.com/clip.mp4"))}, 400, "remote"),
        "outside the allowed folder": (
            {**ok, "messages": user("Q", ("video", allowed_outside))},
            400,
            "outside --allowed-local-media-path",
        ),
        "relative path": ({**ok, "messages": user("Q", ("video", "clip.mp4"))}, 400, "absolute"),
        "unknown model": ({**ok, "model": "gpt-4o", "messages": VIDEO}, 404, "does not exist"),
        "temperature": ({**ok, "messages": VIDEO, "temperature": 3}, 400, "temperature"),
        "max_tokens": ({**ok, "messages": VIDEO, "max_tokens": 0}, 400, "max_tokens"),
        "n": ({**ok, "messages": VIDEO, "n": 2}, 400, "n=2"),
        "top_logprobs": ({**ok, "messages": VIDEO, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
        "unknown field": ({**ok, "messages": VIDEO, "best_of": 3}, 400, "unknown parameter"),
        "too many stops": ({**ok, "messages": VIDEO, "stop": list("abcde")}, 400, "stop"),
        "tool message": (
            {**ok, "messages": [*VIDEO, {"role": "tool", "content": "42", "tool_call_id": "c"}]},
            400,
            "no tools",
        ),
        "assistant last": ({**ok, "messages": [*VIDEO, {"role": "assistant", "content": "A"}]}, 400, "last message"),
        "media in a system message": (
            {**ok, "messages": [{"role": "system", "content": VIDEO[0]["content"]}, *user("Q")]},
            400,
            "text only",
        ),
        "two videos": (
            {**ok, "messages": user("Q", ("video", "file://" + CLIP), ("video", "file://" + CLIP))},
            400,
            "one video",
        ),
        "no text": ({**ok, "messages": user("", ("video", "file://" + CLIP))}, 400, "no text"),
        "audio part": (
            {**ok, "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            400,
            "input_audio",
        ),
        "prompt too long": ({**ok, "messages": VIDEO, "max_tokens": 4000}, 400, "max_position_embeddings"),
        "not JSON": (b"{model: ", 400, "not valid JSON"),
        "too large": (
            json.dumps({**ok, "messages": user("Q", ("video", "data:video/mp4;base64," + "A" * (2 << 20)))}).encode(),
            413,
            "--max-request-bytes",
        ),
    }


def test_bad_requests_are_openai_errors_and_the_worker_keeps_serving(spec, expected, tmp_path):
    outside = tmp_path / "clip.mp4"
    outside.write_bytes(Path(CLIP).read_bytes())
    for what, (body, status, phrase) in bad_requests(str(outside)).items():
        got, raw = post(spec.url + "/v1/chat/completions", body)
        error = json.loads(raw)["error"]
        assert got == status and phrase in error["message"], (what, got, error)
        assert set(error) == {"message", "type", "param", "code"} and "\n" not in error["message"], what
    with pytest.raises(openai.BadRequestError, match="base64"):  # the official client maps them as OpenAI's
        spec.client().chat.completions.create(
            model=MODEL, max_tokens=4, stream=True, messages=user("Q", ("image", "data:image/png;base64,@@@"))
        )
    with pytest.raises(openai.NotFoundError):
        spec.client().chat.completions.create(model="gpt-4o", messages=VIDEO, max_tokens=4)
    out = spec.client().chat.completions.create(model=MODEL, messages=VIDEO, max_tokens=VIDEO_TOKENS)
    assert out.choices[0].message.content == expected["video"]["text"]
    assert spec.metric('specvlm_requests_total{status="400"}') >= 21
    assert "Traceback" not in spec.log.read_text()


def test_only_json_posts_addressed_to_a_loopback_host_are_served(spec):
    """A web page can make a browser POST a text/plain form to 127.0.0.1 (CSRF), or reach it under the page's own
    host name (DNS rebinding); a server bound to a loopback address answers neither."""
    body = {"model": MODEL, "messages": user("Q"), "max_tokens": 2}
    status, raw = _http(
        urllib.request.Request(
            spec.url + "/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "text/plain"}
        )
    )
    assert status == 415 and json.loads(raw)["error"]["code"] == "unsupported_media_type"
    status, raw = post(spec.url + "/v1/chat/completions", body, headers={"Host": "attacker.example"})
    assert status == 400 and json.loads(raw)["error"]["code"] == "invalid_host"
    assert get(spec.url + "/health", headers={"Host": "attacker.example:8000"})[0] == 400
    assert get(spec.url + "/health", headers={"Host": f"localhost:{spec.url.rsplit(':', 1)[1]}"})[0] == 200
    assert post(spec.url + "/v1/chat/completions", body)[0] == 200
    assert [host_name(h) for h in ("127.0.0.1:80", "[::1]:8000", "::1", "LocalHost", "a.example:1")] == [
        "127.0.0.1",
        "::1",
        "::1",
        "localhost",
        "a.example",
    ]


def test_api_key(base):
    status, raw = get(base.url + "/v1/models")
    assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
    for key in ("wrong", ""):
        with pytest.raises(openai.AuthenticationError):
            base.client(key or "x").chat.completions.create(model=MODEL, messages=VIDEO, max_tokens=2)
    status, _ = post(base.url + "/v1/chat/completions", dict(model=MODEL, messages=VIDEO, max_tokens=2))
    assert status == 401
    assert get(base.url + "/v1/models", {"Authorization": f"Bearer {KEY}"})[0] == 200
    assert get(base.url + "/health")[0] == 200 and get(base.url + "/metrics")[0] == 200


# ---- queue, timeout, disconnects, concurrency ------------------------------------------------------------------


def wait_for(condition, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.05)


def test_full_queue_is_429_and_a_disconnect_frees_the_worker(base, expected):
    client = base.client(KEY)
    gone = base.metric('specvlm_requests_cancelled_total{reason="disconnect"}')
    hold = client.chat.completions.create(model=MODEL, messages=VIDEO, stream=True, **LONG)
    next(iter(hold))  # the role chunk: the worker is generating it
    queued = {}
    waiter = threading.Thread(
        target=lambda: queued.update(
            out=client.chat.completions.create(model=MODEL, messages=VIDEO, max_tokens=VIDEO_TOKENS)
        )
    )
    waiter.start()
    wait_for(lambda: base.metric("specvlm_running_requests") == 1 and base.metric("specvlm_queue_length") == 1)
    with pytest.raises(openai.RateLimitError) as refused:  # running one + waiting one = full
        client.chat.completions.create(model=MODEL, messages=VIDEO, max_tokens=2)
    assert refused.value.body["code"] == "queue_full"
    status, raw = post(base.url + "/v1/chat/completions", b"{not even json", {"Authorization": f"Bearer {KEY}"})
    assert status == 429, raw  # refused before its body is read: no parsing, decoding or writing for nothing
    hold.close()  # the client goes away mid-stream
    waiter.join(60)
    assert queued["out"].choices[0].message.content == expected["video"]["text"]
    assert base.metric('specvlm_requests_cancelled_total{reason="disconnect"}') == gone + 1


def test_bodies_being_sent_hold_queue_places_and_a_client_that_leaves_mid_body_frees_its_own(base, expected):
    """Uploads count as queued from their headers on: with --max-batch 1 --max-queue 1, two clients still sending
    their bodies fill the server, a third request gets its 429 at once; when the two leave mid-body (499) their
    places are free again and the next request is answered."""
    import socket

    host, port = base.url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
        'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"model": '
    ).encode()
    left = base.metric('specvlm_requests_total{status="499"}')
    uploads = [socket.create_connection((host, int(port)), timeout=30) for _ in range(2)]
    try:
        for upload in uploads:
            upload.sendall(head)
        wait_for(lambda: base.metric("specvlm_queue_length") == 2)
        status, raw = post(base.url + "/v1/chat/completions", {"model": MODEL}, {"Authorization": f"Bearer {KEY}"})
        assert status == 429 and json.loads(raw)["error"]["code"] == "queue_full", raw
    finally:
        for upload in uploads:
            upload.close()
    wait_for(lambda: base.metric("specvlm_queue_length") == 0)
    assert base.metric('specvlm_requests_total{status="499"}') == left + 2
    out = base.client(KEY).chat.completions.create(model=MODEL, messages=VIDEO, max_tokens=VIDEO_TOKENS)
    assert out.choices[0].message.content == expected["video"]["text"]


def test_a_body_that_does_not_arrive_in_time_is_408():
    """A client that sends its headers and then trickles (or nothing) must not hold its queue place for ever."""
    import asyncio

    from specvlm.serve.app import read_json

    class Trickling:
        headers = {"content-length": "10"}

        async def stream(self):
            yield b"{"
            await asyncio.sleep(60)
            yield b"}"

    with pytest.raises(APIError, match="did not arrive within 0.2 s") as late:
        asyncio.run(read_json(Trickling(), 1000, timeout=0.2))
    assert late.value.status == 408


def test_admitted_places_count_as_queued_until_submitted_or_released():
    from specvlm.serve.worker import Worker

    worker = Worker(None, max_queue=1, metrics=None, max_batch=1)
    places = [worker.admit(), worker.admit()]  # one for the free batch place, one waiting
    assert worker.queue_length == 2 and not worker.has_room()
    with pytest.raises(APIError, match="queue is full"):
        worker.admit()
    worker.release(places[0])
    worker.release(places[0])  # a second release (after submit took it over) frees nothing more
    assert worker.queue_length == 1 and worker.has_room()
    worker.release(places[1])
    assert worker.queue_length == 0


@pytest.mark.slow
def test_request_timeout_is_504_and_frees_the_worker(base, expected):
    """A running streamed request gets an error event at its deadline; one waiting behind it a 504."""
    client = base.client(KEY)
    counted = {status: base.metric(f'specvlm_requests_total{{status="{status}"}}') for status in (200, 504)}
    timed_out = base.metric('specvlm_requests_cancelled_total{reason="timeout"}')
    started = time.monotonic()
    stream = iter(client.chat.completions.create(model=MODEL, messages=VIDEO, stream=True, **LONG))
    next(stream)
    with pytest.raises(openai.APIStatusError) as waited:
        client.chat.completions.create(model=MODEL, messages=VIDEO, **LONG)
    assert waited.value.status_code == 504 and waited.value.body["code"] == "timeout"
    with pytest.raises(openai.APIError, match="--request-timeout"):
        for _ in stream:
            pass
    assert TIMEOUT_S <= time.monotonic() - started < 2 * TIMEOUT_S + 10
    out = client.chat.completions.create(model=MODEL, messages=VIDEO, max_tokens=VIDEO_TOKENS)
    assert out.choices[0].message.content == expected["video"]["text"]
    assert base.metric('specvlm_requests_cancelled_total{reason="timeout"}') == timed_out + 2
    # the stream that ended in an error event counts as its error, not as the 200 its headers said
    assert base.metric('specvlm_requests_total{status="504"}') == counted[504] + 2
    assert base.metric('specvlm_requests_total{status="200"}') == counted[200] + 1


def test_a_non_streamed_client_that_leaves_is_noticed_while_tokens_flow(spec):
    """The handler of a non-streamed answer looked for a gone client only after a 0.2 s pause in the tokens, so a
    long answer was generated to its end for nobody (and counted a 200); now it looks every 0.2 s regardless."""
    import http.client

    host, port = spec.url.removeprefix("http://").split(":")
    cancelled = 'specvlm_requests_cancelled_total{reason="disconnect"}'
    before, gone_before = spec.metric("specvlm_generation_tokens_total"), spec.metric(cancelled)
    body = json.dumps({"model": MODEL, "messages": VIDEO, "max_tokens": LONG["max_tokens"], "ignore_eos": True})
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    wait_for(lambda: spec.metric("specvlm_running_requests") == 1)
    time.sleep(1.0)  # its tokens flow: a round every few tens of milliseconds, never a 0.2 s pause
    connection.close()  # the client goes away without reading the answer
    wait_for(lambda: spec.metric(cancelled) == gone_before + 1)
    assert spec.metric("specvlm_generation_tokens_total") - before < LONG["max_tokens"] / 4
    wait_for(lambda: spec.metric("specvlm_running_requests") == 0)


def test_disconnect_mid_stream_does_not_stall_the_next_request(spec, expected):
    client = spec.client()
    # counted against what the server had before: the module's earlier tests leave disconnects on it too (an
    # absolute "== 1" never held once this request's own disconnect was counted before the first look)
    cancelled = 'specvlm_requests_cancelled_total{reason="disconnect"}'
    before, gone_before = spec.metric("specvlm_generation_tokens_total"), spec.metric(cancelled)
    stream = client.chat.completions.create(model=MODEL, messages=VIDEO, stream=True, **LONG)
    chunks = iter(stream)
    for _ in range(3):
        next(chunks)
    stream.close()  # the client goes away mid-stream
    wait_for(lambda: spec.metric(cancelled) == gone_before + 1)
    stopped_after = spec.metric("specvlm_generation_tokens_total") - before
    assert stopped_after < LONG["max_tokens"] / 4
    # the worker lets go of it (not a clock bound, which a loaded machine can miss); a stalled worker would also
    # leave the next request without an answer (the client's timeout)
    wait_for(lambda: spec.metric("specvlm_running_requests") == 0)
    out = client.chat.completions.create(model=MODEL, messages=VIDEO, max_tokens=VIDEO_TOKENS)
    assert out.choices[0].message.content == expected["video"]["text"]


@pytest.mark.slow
def test_sixteen_concurrent_streamed_clients_get_the_single_answer(spec, expected, picture):
    messages = user(IMAGE_QUESTION, ("image", data_url(picture, "image/png")))
    client = spec.client()
    answers: dict = {}

    def ask(i: int) -> None:
        chunks = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=IMAGE_TOKENS, stream=True)
        answers[i] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert answers == {i: expected["image"]["text"] for i in range(16)}


def test_batched_clients_get_their_single_answers_while_one_leaves(spec, expected, picture):
    """Continuous batching: video and image requests decode together (the worker runs several at once), one
    long request leaves mid-stream (its client goes away) while the others go on; every other answer is exactly
    the one `specvlm generate` gives alone."""
    client = spec.client()
    image = user(IMAGE_QUESTION, ("image", data_url(picture, "image/png")))
    answers, running = {}, []
    before = spec.metric('specvlm_requests_cancelled_total{reason="disconnect"}')

    def ask(i: int) -> None:
        messages, tokens = (VIDEO, VIDEO_TOKENS) if i % 2 else (image, IMAGE_TOKENS)
        chunks = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=tokens, stream=True)
        answers[i] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    leaving = client.chat.completions.create(model=MODEL, messages=VIDEO, stream=True, **LONG)
    chunks = iter(leaving)
    next(chunks)
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        running.append(spec.metric("specvlm_running_requests"))
        if len(running) == 20:
            leaving.close()  # mid-stream, while the others decode
        time.sleep(0.05)
    leaving.close()
    assert answers == {i: expected["video" if i % 2 else "image"]["text"] for i in range(6)}
    assert max(running) >= 3  # requests really decoded together
    wait_for(lambda: spec.metric('specvlm_requests_cancelled_total{reason="disconnect"}') == before + 1)


CHEAP_TOKENS = 4  # what a fuzzed request that would generate asks for at most (bounds the test's time)
FUZZ_EXAMPLES = 30  # per operation (the chat route's are the costly ones: most are refused before any work)


@pytest.fixture
def ieee_floats():
    """Hypothesis refuses to draw floats while denormals are flushed to zero, which the benchmark scripts switch on
    for their whole process (a test before this one, in the same worker, may have run one's main)."""
    import torch

    from specvlm.numerics import flush_denormal_enabled

    flushed = flush_denormal_enabled()
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(flushed)


def test_fuzzed_requests_from_the_published_schema_never_get_a_5xx(spec, ieee_floats):
    """Requests generated from /openapi.json by schemathesis (property-based, derandomized so a run is
    repeatable): every operation answers below 500, in OpenAI's error shape when it refuses. Token counts the
    server would accept are lowered to CHEAP_TOKENS; out-of-range ones stay (their 400 is part of what is tested)."""
    schema = schemathesis.openapi.from_url(spec.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/chat/completions", "GET /health", "GET /ready"}
    seen: dict = {}
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def answers_below_500(case):
            if isinstance(case.body, dict):
                for key in ("max_tokens", "max_completion_tokens"):
                    value = case.body.get(key)
                    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                        case.body[key] = min(value, CHEAP_TOKENS)
            response = case.call(timeout=60)
            assert response.status_code < 500, (case.operation.label, response.status_code, response.text[:300])
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            if response.status_code >= 400:
                assert set(response.json()["error"]) >= {"message", "type"}

        answers_below_500()
    assert seen.get(200) and seen.get(400), seen  # it reached the model and the refusals both


def test_temporary_media_files_are_removed(spec, base):
    """Runs last: every request has ended, so no request folder is left; a stopped server leaves nothing."""
    wait_for(lambda: not list(spec.tmp.glob("specvlm-serve-*/request-*")), timeout=10)
    assert len(list(spec.tmp.iterdir())) == 1  # the server's own temporary root, still running
    base.stop()
    assert base.proc.returncode is not None and not list(base.tmp.iterdir())


# ---- pure parts ------------------------------------------------------------------------------------------------


def test_stop_point_holds_back_what_could_become_a_stop_string():
    assert stop_point("Hello wor", ("world",), final=False) == (6, False)
    assert stop_point("Hello wor", ("world",), final=True) == (9, False)
    assert stop_point("Hello world!", ("world", "lo"), final=False) == (3, True)  # the earliest stop wins
    assert stop_point("abc", (), final=False) == (3, False)


def test_stop_point_from_where_it_left_off_equals_a_full_search():
    """Fed the answer as it grows, with how much it let out before (`shown`), stop_point cuts where a full search
    of the whole text cuts, and holds back the longest tail that could still become a stop string (KMP)."""
    rng = random.Random(0)
    for _ in range(300):
        stops = tuple("".join(rng.choice("ab") for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 3)))
        answer = "".join(rng.choice("abc") for _ in range(rng.randint(0, 40)))
        shown = 0
        for end in range(1, len(answer) + 1):
            cut, stopped = stop_point(answer[:end], stops, False, shown)
            assert (cut, stopped) == stop_point(answer[:end], stops, False), (answer[:end], stops, shown)
            shown = max(shown, cut)
            if stopped:
                break
        for stop in stops:
            assert partial_stop(answer, stop) == max(
                (k for k in range(len(stop)) if answer.endswith(stop[:k])), default=0
            ), (answer, stop)


def test_local_paths_stay_inside_the_allowed_folder(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside.mp4"
    allowed.mkdir()
    outside.write_bytes(b"x")
    (allowed / "inside.mp4").write_bytes(b"x")
    (allowed / "link.mp4").symlink_to(outside)
    root = allowed.resolve()
    assert local_file(str(allowed / "inside.mp4"), "video", root, "p") == (allowed / "inside.mp4").resolve()
    for path in (allowed / "link.mp4", allowed / ".." / "outside.mp4"):
        with pytest.raises(APIError, match="outside"):
            local_file(str(path), "video", root, "p")
    with pytest.raises(APIError, match="allowed-local-media-path"):
        local_file(str(allowed / "inside.mp4"), "video", None, "p")
    os.mkfifo(allowed / "pipe.mp4")  # reading it would block the prepare thread forever
    with pytest.raises(APIError, match="not a regular file"):
        local_file(str(allowed / "pipe.mp4"), "video", root, "p")
    with pytest.raises(APIError, match="NUL"):
        local_file(str(allowed) + "/in\x00side.mp4", "video", root, "p")


def test_request_fields_map_to_generate_options():
    defaults = Decoding(max_new_tokens=128, temperature=0.0, top_p=1.0, top_k=0, seed=None, stop=())
    request = parse_request(
        dict(
            model="m",
            messages=[
                {"role": "user", "content": "Q"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "more"},
                        {"type": "image_url", "image_url": {"url": "data:x"}},
                    ],
                },
            ],
            max_completion_tokens=7,
            max_tokens=9,
            temperature=0.5,
            top_k=-1,
            stop="END",
            n=1,
            user="me",
        )
    )
    options = decoding(request, defaults)
    assert options == Decoding(max_new_tokens=7, temperature=0.5, top_p=1.0, top_k=0, seed=None, stop=("END",))
    assert options.generate_options() == dict(max_new_tokens=7, do_sample=True, temperature=0.5, top_p=1.0, top_k=0)
    ignoring = decoding(
        parse_request(dict(model="m", messages=[{"role": "user", "content": "Q"}], ignore_eos=True)), defaults
    )
    assert ignoring.generate_options() == dict(max_new_tokens=128, do_sample=False, eos_token_id=[])
    turn = chat_turn(request.messages)
    assert turn.prompt == "Q\nmore" and [m.url for m in turn.images] == ["data:x"] and turn.video is None
    assert decoding(
        parse_request(dict(model="m", messages=[{"role": "user", "content": "Q"}])), defaults
    ).generate_options() == dict(max_new_tokens=128, do_sample=False)


def test_conversations_keep_their_turns_and_parts_in_order():
    """User messages alone are one user turn (as `specvlm generate`); with system / developer / assistant messages
    the conversation is kept as given (developer rendered as system), media placeholders where their parts are."""
    image = {"type": "image_url", "image_url": {"url": "data:a"}}
    request = parse_request(
        dict(
            model="m",
            messages=[
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Look:"}, image]},
                {"role": "assistant", "content": "A cat."},
                {"role": "user", "content": [image, {"type": "text", "text": "And now?"}]},
            ],
        )
    )
    turn = chat_turn(request.messages)
    assert turn.prompt == "And now?" and [m.where for m in turn.images] == [
        "messages.1.content.1.image_url",
        "messages.3.content.0.image_url",
    ]
    assert turn.messages == (
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And now?"}]},
    )
    single = chat_turn(parse_request(dict(model="m", messages=[{"role": "user", "content": "Q"}])).messages)
    assert single.messages is None and single.prompt == "Q"


def test_metrics_are_prometheus_text():
    metrics = Metrics()
    metrics.request(200)
    metrics.request(429)
    metrics.tau.observe(2.2)
    text = metrics.render(queue_length=3, running=1)
    assert 'specvlm_requests_total{status="429"} 1' in text and "specvlm_queue_length 3" in text
    assert 'specvlm_tau_bucket{le="2.5"} 1' in text and 'specvlm_tau_bucket{le="2"} 0' in text
    assert all(line.startswith("#") or re.match(r"^specvlm_\w+(\{[^}]*\})? \S+$", line) for line in text.splitlines())


def test_help_and_bad_options_are_one_line_before_any_weights_load(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0 and "--allowed-local-media-path" in capsys.readouterr().out
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bad = {  # options -> a phrase of the one-line error
            ("--port", "70000"): "--port",
            ("--max-queue", "-1"): "--max-queue",
            ("--request-timeout", "0"): "--request-timeout",
            ("--max-request-bytes", "0"): "--max-request-bytes",
            ("--stuck-timeout", "0"): "--stuck-timeout",
            ("--max-images", "0"): "--max-images",
            ("--max-video-pixels", "0"): "--max-video-pixels",
            ("--draft", "none", "--draft-num-frames", "2"): "--draft-num-frames",
            ("--allowed-local-media-path", str(tmp_path / "none")): "not a folder",
            ("--draft", "none", "--pruning", "specvlm"): "no draft is given",
            ("--num-frames", "0"): "--num-frames",
            ("--temperature", "-1"): "--temperature",
            ("--max-pixels", "10"): "--max-pixels",
            ("--draft", str(tmp_path / "none")): "does not exist",
            ("--port", str(taken.getsockname()[1])): "cannot listen",
        }
        for options, phrase in bad.items():
            assert main(["serve", "--target", str(TARGET), *options]) == 2, options
            err = capsys.readouterr().err.strip().splitlines()
            assert err[-1].startswith("specvlm: error: ") and phrase in err[-1], (options, err)
            assert not any(line.startswith("loading") for line in err), options


def test_warm_up_runs_every_batch_bucket_and_leaves_the_engine_ready():
    """What the server does before it reports healthy when it compiles (CUDA, or --compile on; run here
    uncompiled, the same calls): every row bucket up to --max-batch decodes two rounds, nothing stays in the
    batch, the slot cache already reserves RESERVE_AHEAD new tokens, and a request afterwards answers as alone."""
    from specvlm.arguments import check_decoding
    from specvlm.cli import build_parser
    from specvlm.engine.batch import RESERVE_AHEAD
    from specvlm.serve.command import load_engine
    from specvlm.serve.media import TurnFiles

    args = build_parser().parse_args(["serve", "--target", str(TARGET), "--draft", str(DRAFT), "--max-batch", "5"])
    check_decoding(args)  # what `specvlm serve` checks and fills in before loading
    engine = load_engine(args, lambda message: None)
    assert engine.warm_up(5) == [1, 2, 3, 4, 5]
    target = engine.generator.session(engine.generator.target)
    assert target.cache.capacity >= RESERVE_AHEAD and target.cache.rows >= 5
    decoding = Decoding(max_new_tokens=VIDEO_TOKENS, temperature=0.0, top_p=1.0, top_k=0, seed=None, stop=())
    request = engine.request(engine.prepare(TurnFiles(QUESTION, (), Path(CLIP), {}), decoding), decoding)
    batch = engine.batch(5)
    row, tokens = batch.add(request)
    while len(batch):
        tokens += batch.step()[0][1]
    assert (
        engine.tokenizer.decode(tokens, skip_special_tokens=True)
        == cli_generate("--video", CLIP, "--prompt", QUESTION, "--max-new-tokens", VIDEO_TOKENS)["text"]
    )


def test_max_queue_counts_requests_that_wait_beyond_the_free_places_of_the_batch():
    """`--max-queue 0` serves up to --max-batch requests at once and refuses one more (it refused all before)."""
    from specvlm.serve.worker import Worker

    worker = Worker(None, max_queue=0, metrics=None, max_batch=2)
    worker.check_room()  # idle: two free places
    worker._preparing.update({"a", "b"})  # two requests on their way into the batch
    with pytest.raises(APIError, match="queue is full") as refused:
        worker.check_room()
    assert refused.value.status == 429
    queued = Worker(None, max_queue=1, metrics=None, max_batch=1)
    queued._running.append("running")
    queued.check_room()  # the batch is full, one may wait
    queued._preparing.add("waiting")
    with pytest.raises(APIError, match="queue is full"):
        queued.check_room()


def test_health_says_503_when_the_worker_died_or_hangs_and_ready_when_the_queue_is_full():
    """/health (liveness) and /ready (readiness) read `Worker.problem` and `Worker.has_room`."""
    from specvlm.serve.worker import Worker

    worker = Worker(None, max_queue=0, metrics=None, max_batch=1, stuck_timeout=5)
    worker._thread = threading.Thread(target=lambda: None)
    assert worker.problem() == "the model worker thread has stopped"  # never started, or died
    worker._thread.is_alive = lambda: True
    assert worker.problem() is None and worker.has_room()
    worker._running.append("running")
    assert worker.problem() is None and not worker.has_room()  # busy, not stuck: one step of 0 s
    worker.beat -= 6
    assert "in one step for 6 s (over 5 s)" in worker.problem()
    worker._running.clear()
    assert worker.problem() is None  # idle for long is fine


class DecodingForever:
    """An engine whose media decode never ends by itself: it only calls the job's `check` (as load_video's
    progress callback does every 64 frames)."""

    folder_names: dict = {}
    keep_alive_s = None

    def prepare(self, files, decoding, check):
        while True:
            check()
            time.sleep(0.01)

    def batch(self, rows):
        return None

    def close(self, batch):
        pass


def test_a_deadline_or_a_cancel_stops_a_request_while_its_media_decode():
    """Decoding a long video used to run to its end whatever happened: a request past its deadline, or whose client
    left, now stops within one progress call, and the worker's prepare thread is free again."""
    import asyncio

    from specvlm.serve.media import TurnFiles
    from specvlm.serve.worker import Job, Worker

    metrics = Metrics()
    worker = Worker(DecodingForever(), max_queue=4, metrics=metrics, max_batch=1)
    worker.start()
    loop = asyncio.new_event_loop()
    try:
        decoding = Decoding(max_new_tokens=4, temperature=0.0, top_p=1.0, top_k=0, seed=None, stop=())
        files = TurnFiles("Q", (), None, {})
        late, left = Job(files, decoding, 0.3, None, loop), Job(files, decoding, None, None, loop)
        worker.submit(late)
        worker.submit(left)
        time.sleep(0.1)
        worker.cancel(left, "disconnect")
        wait_for(lambda: worker.queue_length == 0, timeout=5)
        assert metrics.cancels == {"timeout": 1, "disconnect": 1}
    finally:
        worker.stop()
        loop.close()


class Counting:
    """An engine whose every request answers `length` tokens of 1 (one a round): a scripted batch beside the worker."""

    folder_names: dict = {}
    keep_alive_s = None

    class tokenizer:
        @staticmethod
        def decode(ids, skip_special_tokens=True):
            return "a" * len(ids)

    def __init__(self, length: int = 3):
        self.length = length

    def prepare(self, files, decoding, check):
        import torch

        return {"input_ids": torch.zeros(1, 2, dtype=torch.long)}

    def request(self, inputs, decoding):
        from types import SimpleNamespace

        return SimpleNamespace(prompt_ids=inputs["input_ids"][0], eos=set(), logprobs=None, token_logprobs=None)

    def batch(self, rows):
        engine = self

        class Row:  # compared by identity, as batch.Row (two rows with the same counts are not one row)
            def __init__(self, left: int):
                self.left, self.done, self.stats = left, False, None

        class Batch:
            def __init__(self):
                self.rows = []

            def add(self, request, tag):
                row = Row(engine.length - 1)
                self.rows.append(row)
                return row, [1]

            def step(self):
                time.sleep(0.02)
                for row in self.rows:
                    row.left -= 1
                    row.done = row.left == 0
                done = [(row, [1]) for row in self.rows]
                self.rows[:] = [row for row in self.rows if not row.done]
                return done

            def remove(self, row):
                self.rows.remove(row)

        return Batch()

    def stats(self, sink, stats):
        return {}

    def close(self, batch):
        pass


def leaves_without_folders(kind: type):
    """A worker's collection of requests (a `kind`) that checks, as each leaves it, that the request's folder is gone
    already: /metrics reads the counts without the lock, so a server seen idle must have no request folder left."""

    class Checked(kind):
        def remove(self, item):
            job = getattr(item, "job", item)
            assert not job.workdir.exists(), "a request stopped counting before its folder was removed"
            super().remove(item)

    return Checked()


def test_a_request_stops_counting_as_queued_or_running_only_once_its_folder_is_gone(tmp_path):
    """The soak's "no request folder left behind" once the server is idle: a finished, a cancelled running and a
    cancelled waiting request each remove their folder before they leave the worker's counts."""
    import asyncio
    from collections import deque

    from specvlm.serve.media import TurnFiles
    from specvlm.serve.worker import Job, Worker

    metrics = Metrics()
    worker = Worker(Counting(length=50), max_queue=4, metrics=metrics, max_batch=2)
    worker._running = leaves_without_folders(list)  # (a job joining the batch moves on to _running, still counted)
    worker._waiting = leaves_without_folders(deque)
    worker.start()
    loop = asyncio.new_event_loop()
    try:
        decoding = Decoding(max_new_tokens=50, temperature=0.0, top_p=1.0, top_k=0, seed=None, stop=())
        files = TurnFiles("Q", (), None, {})
        jobs = [Job(files, decoding, None, Path(tmp_path, f"request-{i}"), loop) for i in range(3)]
        for job in jobs:
            job.workdir.mkdir()
            worker.submit(job)
        wait_for(lambda: worker.running == 2 and len(worker._waiting) == 1, timeout=5)
        worker.cancel(jobs[2], "disconnect")  # waiting: dropped at once
        worker.cancel(jobs[1], "disconnect")  # running: leaves before the next round
        wait_for(lambda: worker.running == 0 and worker.queue_length == 0, timeout=10)  # jobs[0] ran to its end
        assert not list(tmp_path.iterdir())
        assert metrics.cancels == {"disconnect": 2} and metrics.generation_tokens >= 50
    finally:
        worker.stop()
        loop.close()


def test_client_values_in_errors_and_logs_are_bounded_and_on_one_line():
    from specvlm.serve.errors import MAX_MESSAGE_CHARS, loggable

    assert len(APIError(400, "x" * 10**6).message) == MAX_MESSAGE_CHARS
    assert loggable("/v1/a\nINFO forged line\x1b[31m") == "/v1/a\\nINFO forged line\\x1b[31m"
    assert len(loggable("é" * 1000)) == 200
    request = parse_request(dict(model="m", messages=[user("Q", *[("image", "data:x")] * 3)[0]]))
    with pytest.raises(APIError, match="3 images in one request: 2 at most \\(--max-images\\)"):
        chat_turn(request.messages, max_images=2)


class Idle:
    """An engine with no request to run, whose model thread must ping the other ranks (a split target's followers
    wait in a collective with a timeout) every `keep_alive_s` and release them when the server stops."""

    folder_names: dict = {}
    keep_alive_s = 0.05

    def __init__(self):
        self.pings, self.closed = 0, []

    def batch(self, rows):
        return "batch"

    def keep_alive(self, batch):
        self.pings += 1

    def close(self, batch):
        self.closed.append(batch)


def test_an_idle_worker_keeps_the_other_ranks_alive_and_releases_them_at_the_end():
    from specvlm.serve.worker import Worker

    engine = Idle()
    worker = Worker(engine, max_queue=1, metrics=Metrics(), max_batch=1)
    worker.start()
    try:
        wait_for(lambda: engine.pings >= 3, timeout=5)
        assert worker.problem() is None
    finally:
        worker.stop()
    assert engine.closed == ["batch"]
