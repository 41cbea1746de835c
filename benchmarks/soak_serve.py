"""`specvlm serve` soak: one speculative server under many concurrent clients for minutes, good requests mixed with
clients that disconnect mid-stream and hostile requests, checking that nothing breaks, leaks or changes an answer.

    python benchmarks/soak_serve.py [--duration 300] [--clients 64] [--max-tokens 32] [--family qwen2_5_vl]
                                    [--sample-s 5] [--rss-slack-mib N] [--server-args "..."] [--threads 2]
                                    [--seed 0] [--record]

One `specvlm serve` (the bundled testbed pair, speculative, its default --max-batch 16 and --max-queue 64;
--max-request-bytes 8 MiB so an oversized body is cheap to send). After one warm-up request, every distinct good
request runs alone for its reference answer (the warm-up's must agree with its own). Then --clients threads loop for
--duration seconds, each request drawn at random (seeded; the first draws go once through every kind, so even a
short run sends each):

  video            a bundled caption clip (base64 data URL) and its question, streamed
  conversation     [system, user (the clip and its question), assistant, user (a follow-up)], streamed
  disconnect       one of the good requests, streamed; the connection is closed after two content chunks
  image bomb       a 12000 x 12000 1-bit PNG (~17 KiB, 144 M pixels)                       -> 400
  long video       a 16 x 16 mp4 one frame past the server's default frame limit (100,000)  -> 400
  malformed JSON   a body cut short                                                         -> 400
  max_tokens text  "max_tokens": "ten"                                                      -> 400
  messages text    "messages" as a string                                                   -> 400
  nested JSON      valid JSON nested 100,000 deep                                           -> 400
  too large        a body 1 MiB over --max-request-bytes                                    -> 413
  content type     a good body sent as text/plain                                           -> 415

Good requests are greedy with ignore_eos and exactly --max-tokens new tokens, so every answer must equal its
reference; a disconnected request's partial answer must be a prefix of it. 429 (queue full) is allowed for every kind
and counted. Meanwhile the server's resident memory (VmRSS), threads and open file descriptors are sampled from
/proc every --sample-s seconds. At the end (clients stopped, the server given time to go idle): /health, /metrics
(its status counts, queue and running gauges), the server log (no tracebacks) and the server's temporary folder (no
request folder left). Exits non-zero on any 5xx, any mismatch, any other unexpected status or connection error, a
dead or unhealthy server, or requests left in its queue or batch; with --rss-slack-mib N, also when the resident
memory peak of the soak's second half is more than N MiB above the first half's. Without it that difference is only
reported: under heavy load the working set builds up for minutes (on the 2-core testbed machine, 64 clients: ~4
minutes, then it held for the rest of a 15-minute run; docs/BENCHMARKS.md, serve-soak), so a 5-minute soak cannot
tell a slow build-up from a leak, and a longer one (--duration 900) is the memory test.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import itertools
import json
import os
import random
import re
import shlex
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from bench_serve import QUESTION_KIND, Server, ask, percentile

from common import machine, record, table

MAX_REQUEST_BYTES = 8 << 20  # the server's --max-request-bytes here: the 413 body is this plus 1 MiB
SYSTEM = "You are a careful video analyst. Answer in plain sentences."
GOOD = ("video", "conversation")  # streamed, answers compared with the references
EXPECTED = {  # kind -> the status it must get (or 429)
    "video": 200,
    "conversation": 200,
    "disconnect": 200,
    "image bomb": 400,
    "long video": 400,
    "malformed JSON": 400,
    "max_tokens text": 400,
    "messages text": 400,
    "nested JSON": 400,
    "too large": 413,
    "content type": 415,
}
WEIGHTS = {"video": 40, "conversation": 26, "disconnect": 10} | {k: 3 for k in list(EXPECTED)[3:]}  # sum 100
DISCONNECT_AFTER = 2  # content chunks read before a disconnecting client closes its connection
FIRST_MINUTE_S = 60.0


# ---- requests --------------------------------------------------------------------------------------------------


def good_prompts(clips: list[dict], follow_ups: dict) -> list[tuple[str, list]]:
    """(kind, messages) of every distinct good request: per caption clip its question alone, and a conversation."""
    prompts = []
    for clip in clips:
        video = {
            "type": "video_url",
            "video_url": {
                "url": "data:video/mp4;base64," + base64.b64encode(Path(clip["video"]).read_bytes()).decode()
            },
        }
        user = {"role": "user", "content": [video, {"type": "text", "text": clip["question"]}]}
        prompts.append(("video", [user]))
        follow = follow_ups[clip["clip"]]
        prompts.append(
            (
                "conversation",
                [
                    {"role": "system", "content": SYSTEM},
                    user,
                    {"role": "assistant", "content": clip["reference"]},
                    {"role": "user", "content": follow["question"]},
                ],
            )
        )
    return prompts


def image_bomb() -> bytes:
    """A PNG of 12000 x 12000 1-bit pixels: small on the wire, 144 M pixels (412 MiB as RGB) once decoded."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("1", (12000, 12000)).save(out, format="PNG")
    return out.getvalue()


def long_video(frames: int) -> bytes:
    """A 16 x 16 mp4 of `frames` frames: one frame encoded once, its packet muxed `frames` times (1 s, ~2 MB)."""
    import av
    import numpy as np

    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        (first,) = [*stream.encode(frame), *stream.encode()]
        data = bytes(first)
        for i in range(frames):
            packet = av.Packet(data)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, first.time_base
            packet.is_keyframe = True
            container.mux(packet)
    return out.getvalue()


def frame_limit() -> int:
    """The frames a video may have by default (specvlm.inputs.limits.MediaLimits; MAX_VIDEO_FRAMES in
    specvlm.inputs.video before it)."""
    try:
        from specvlm.inputs.limits import MediaLimits
    except ImportError:
        from specvlm.inputs.video import MAX_VIDEO_FRAMES

        return MAX_VIDEO_FRAMES
    return MediaLimits().video_frames


def hostile_bodies(prompts: list, max_tokens: int) -> dict:
    """kind -> (body bytes, Content-Type) of every hostile request."""
    ok = {"model": "bench", "max_tokens": max_tokens, "stream": True}
    question = prompts[0][1]

    def media(kind: str, mime: str, data: bytes) -> bytes:
        part = {"type": f"{kind}_url", f"{kind}_url": {"url": f"data:{mime};base64," + base64.b64encode(data).decode()}}
        return json.dumps({**ok, "messages": [{"role": "user", "content": [part, {"type": "text", "text": "Q?"}]}]})

    depth = 100_000
    oversized = json.dumps({**ok, "messages": question, "user": "x" * (MAX_REQUEST_BYTES + (1 << 20))})
    bodies = {
        "image bomb": media("image", "image/png", image_bomb()),
        "long video": media("video", "video/mp4", long_video(frame_limit() + 1)),
        "malformed JSON": json.dumps({**ok, "messages": question})[:200],
        "max_tokens text": json.dumps({**ok, "messages": question, "max_tokens": "ten"}),
        "messages text": json.dumps({**ok, "messages": "Describe the video."}),
        "nested JSON": '{"model": "bench", "messages": ' + "[" * depth + "]" * depth + "}",
        "too large": oversized,
        "content type": json.dumps({**ok, "messages": question}),
    }
    return {
        kind: (body.encode(), "text/plain" if kind == "content type" else "application/json")
        for kind, body in bodies.items()
    }


def post(address: tuple[str, int], body: bytes, content_type: str, timeout: float = 300) -> int:
    """POST to /v1/chat/completions; the status (the response read to its end)."""
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def disconnect(address: tuple[str, int], messages: list, max_tokens: int) -> tuple[int, str]:
    """A streamed good request whose client closes the connection after DISCONNECT_AFTER content chunks: (status,
    the partial answer)."""
    body = json.dumps(
        {
            "model": "bench",
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
        }
    ).encode()
    conn = http.client.HTTPConnection(*address, timeout=600)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            response.read()
            return response.status, ""
        text, chunks = [], 0
        while chunks < DISCONNECT_AFTER and (line := response.fp.readline()):
            if line.startswith(b"data: {"):
                delta = json.loads(line[len(b"data: ") :])["choices"][0]["delta"].get("content")
                if delta:
                    text.append(delta)
                    chunks += 1
        conn.sock.shutdown(socket.SHUT_RDWR)  # a client that goes away: FIN now, nothing more read
        return 200, "".join(text)
    finally:
        conn.close()


# ---- the server's side -----------------------------------------------------------------------------------------


def get(address: tuple[str, int], path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(*address, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def metrics(address: tuple[str, int]) -> dict:
    """/metrics as {name or (name, label value): number}."""
    status, text = get(address, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    out = {}
    for name, label, value in re.findall(r'^specvlm_(\w+?)(?:\{\w+="([^"]*)"\})? (\S+)$', text, re.M):
        out[(name, label) if label else name] = float(value)
    return out


def by_label(snapshot: dict, name: str) -> dict:
    return {key[1]: int(v) for key, v in snapshot.items() if isinstance(key, tuple) and key[0] == name}


def proc_sample(pid: int) -> dict | None:
    """Resident memory (MiB), threads and open file descriptors of a running process; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return dict(rss_mib=int(fields["VmRSS"].split()[0]) / 1024, threads=int(fields["Threads"]), fds=fds)


class Sampler(threading.Thread):
    """Samples the server process every `every` seconds into `samples`: (seconds since start, proc_sample)."""

    def __init__(self, pid: int, every: float):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples, self.done = pid, every, [], threading.Event()
        self.started = time.monotonic()

    def sample(self) -> None:
        if (s := proc_sample(self.pid)) is not None:
            self.samples.append((time.monotonic() - self.started, s))

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.sample()


# ---- the soak --------------------------------------------------------------------------------------------------


class Tally:
    """What the clients saw, per kind, under a lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.ttft: list[float] = []
        self.tokens = self.completed = self.disconnected = 0
        self.mismatches: list[tuple[str, int, str]] = []  # (kind, prompt index, the text that differs)

    def add(self, kind: str, status, seconds: float) -> None:
        with self.lock:
            self.statuses[kind][status] += 1
            self.latency[kind].append(seconds)


def good(client, messages: list, max_tokens: int) -> tuple[object, dict | None]:
    """One streamed good request through the openai client (bench_serve.ask): (status, its result or None)."""
    import openai

    try:
        return 200, ask(client, messages, max_tokens)
    except openai.APIStatusError as err:
        return err.status_code, None
    except openai.APIConnectionError as err:
        return f"connection error ({type(err.__cause__).__name__})", None
    except openai.APIError as err:  # an error event inside a 200 stream: only server errors come so
        return f"5xx in stream ({(err.body or {}).get('type')})", None


def client_loop(c: int, ctx: dict, tally: Tally) -> None:
    rng = random.Random(ctx["seed"] * 1000 + c)
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    prompts, references, max_tokens = ctx["prompts"], ctx["references"], ctx["max_tokens"]
    by_kind = {kind: [i for i, (k, _) in enumerate(prompts) if k == kind] for kind in GOOD}
    while time.monotonic() < ctx["end"] and ctx["server"].proc.poll() is None:
        n = next(ctx["draws"])
        kind = kinds[n] if n < len(kinds) else rng.choices(kinds, weights)[0]
        index = rng.choice(by_kind[kind] if kind in GOOD else range(len(prompts)))
        started = time.perf_counter()
        if kind in GOOD:
            status, result = good(ctx["client"], prompts[index][1], max_tokens)
            if result is not None:
                with tally.lock:
                    tally.completed += 1
                    tally.tokens += result["tokens"]
                    tally.ttft.append(result["ttft"])
                    if result["text"] != references[index] or result["tokens"] != max_tokens:
                        tally.mismatches.append((kind, index, result["text"]))
        else:
            try:
                if kind == "disconnect":
                    status, partial = disconnect(ctx["address"], prompts[index][1], max_tokens)
                    if status == 200:
                        with tally.lock:
                            tally.disconnected += 1
                            if not references[index].startswith(partial) or not partial:
                                tally.mismatches.append((kind, index, partial))
                else:
                    status = post(ctx["address"], *ctx["hostile"][kind])
            except (OSError, http.client.HTTPException) as err:
                status = f"connection error ({type(err).__name__})"
        tally.add(kind, status, time.perf_counter() - started)
        if status == 429:
            time.sleep(0.5)  # "retry later"


def wait_idle(address: tuple[str, int], timeout: float = 60) -> dict:
    """/metrics once the server has no request queued or running (or at `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        snapshot = metrics(address)
        if (snapshot["queue_length"] == 0 and snapshot["running_requests"] == 0) or time.monotonic() > deadline:
            return snapshot
        time.sleep(0.5)


def soak(args, target, draft, prompts: list, workdir: Path) -> dict:
    server_tmp = workdir / "server-tmp"  # the server's TMPDIR: its request folders land here, counted at the end
    server_tmp.mkdir()
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(server_tmp)  # Server copies os.environ for the process it starts
    try:
        options = ["--draft", str(draft), "--max-request-bytes", str(MAX_REQUEST_BYTES), *shlex.split(args.server_args)]
        server = Server(target, options, workdir / "server.log", args.threads)
    finally:
        if saved is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = saved
    out: dict = {"log": workdir / "server.log"}
    client = None
    try:
        hostile = hostile_bodies(prompts, args.max_tokens)  # while the server loads
        client = server.client()
        address = (client.base_url.host, client.base_url.port)
        print(f"server up (pid {server.proc.pid}); references ...", file=sys.stderr, flush=True)
        warm = ask(client, prompts[0][1], args.max_tokens)  # one-time costs off the solo TTFT
        solo = [ask(client, messages, args.max_tokens) for _, messages in prompts]
        out["references"] = references = [r["text"] for r in solo]
        out["unstable_references"] = int(warm["text"] != references[0])
        out["solo_ttft"] = statistics.median(r["ttft"] for r in solo)
        out["solo_tokens_per_s"] = sum(r["tokens"] for r in solo) / sum(r["latency"] for r in solo)
        before = metrics(address)
        sampler = Sampler(server.proc.pid, args.sample_s)
        sampler.sample()
        sampler.start()
        tally = Tally()
        ctx = dict(
            seed=args.seed,
            prompts=prompts,
            references=references,
            max_tokens=args.max_tokens,
            client=client,
            address=address,
            hostile=hostile,
            server=server,
            draws=itertools.count(),
            end=time.monotonic() + args.duration,
        )
        print(f"soak: {args.clients} clients for {args.duration:g} s ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        threads = [threading.Thread(target=client_loop, args=(c, ctx, tally), daemon=True) for c in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        out["wall"] = time.perf_counter() - started
        out["tally"] = tally
        out["alive"] = server.proc.poll() is None
        if out["alive"]:
            out["idle"] = after = wait_idle(address)
            out["health"] = get(address, "/health")
            out["generated"] = after["generation_tokens_total"] - before["generation_tokens_total"]
            out["statuses"] = {
                status: n - by_label(before, "requests_total").get(status, 0)
                for status, n in by_label(after, "requests_total").items()
            }
            out["cancelled"] = by_label(after, "requests_cancelled_total")
            out["left_folders"] = sum(1 for _ in server_tmp.glob("specvlm-serve-*/request-*"))
        sampler.done.set()
        sampler.join()
        sampler.sample()
        out["samples"] = sampler.samples
    finally:
        if client is not None:
            client.close()
        server.stop()
    out["tracebacks"] = out["log"].read_text(errors="replace").count("Traceback")
    return out


# ---- the report ------------------------------------------------------------------------------------------------


def memory(samples: list, slack: float | None, half: float) -> dict:
    """The server's RSS, threads and fds over the soak; `growth`: the RSS peak of the second half (samples after
    `half` seconds) minus the first half's, `within`: growth at most `slack` MiB (None: no bound)."""
    rss = [(t, s["rss_mib"]) for t, s in samples]
    first = [m for t, m in rss if t <= FIRST_MINUTE_S]
    later = [m for t, m in rss if t > FIRST_MINUTE_S]
    halves = [m for t, m in rss if t <= half], [m for t, m in rss if t > half]
    return dict(
        start=rss[0][1],
        max=max(m for _, m in rss),
        end=rss[-1][1],
        first_minute_max=max(first),
        later_max=max(later) if later else None,
        halves=(max(halves[0]), max(halves[1]) if halves[1] else None),
        growth=max(halves[1]) - max(halves[0]) if halves[1] else None,
        by_minute=[min(rss, key=lambda tm: abs(tm[0] - 60 * m))[1] for m in range(int(rss[-1][0] // 60) + 1)]
        + [rss[-1][1]],
        slope=slope([(t, m) for t, m in rss if t > half]),
        within=slack is None or not halves[1] or max(halves[1]) - max(halves[0]) <= slack,
        threads=(samples[0][1]["threads"], max(s["threads"] for _, s in samples), samples[-1][1]["threads"]),
        fds=(samples[0][1]["fds"], max(s["fds"] for _, s in samples), samples[-1][1]["fds"]),
    )


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares MiB per minute of (seconds, MiB) points; None for fewer than 3."""
    if len(points) < 3:
        return None
    mt, mm = statistics.mean(t for t, _ in points), statistics.mean(m for _, m in points)
    return 60 * sum((t - mt) * (m - mm) for t, m in points) / sum((t - mt) ** 2 for t, _ in points)


def statuses_text(counts: Counter) -> str:
    return ", ".join(f"{s}: {n}" for s, n in sorted(counts.items(), key=lambda kv: str(kv[0])))


def report(out: dict, args) -> dict:
    tally: Tally = out["tally"]
    sent = sum(sum(c.values()) for c in tally.statuses.values())
    unexpected = {
        kind: {s: n for s, n in counts.items() if s not in (EXPECTED[kind], 429)}
        for kind, counts in tally.statuses.items()
    }
    unexpected = {kind: bad for kind, bad in unexpected.items() if bad}
    five = sum(n for counts in tally.statuses.values() for s, n in counts.items() if str(s).startswith("5"))
    five += sum(n for s, n in out.get("statuses", {}).items() if s.startswith("5"))
    too_many = sum(c[429] for c in tally.statuses.values())
    mem = memory(out["samples"], args.rss_slack_mib, args.duration / 2)
    ttft = sorted(tally.ttft)
    healthy = out["alive"] and out["health"][0] == 200 and json.loads(out["health"][1]) == {"status": "ok"}
    idle = out["alive"] and out["idle"]["queue_length"] == 0 and out["idle"]["running_requests"] == 0
    mismatches = len(tally.mismatches) + out["unstable_references"]
    checks = {
        "no 5xx": five == 0,
        "every answer identical to its reference": mismatches == 0,
        "no other unexpected status or connection error": not unexpected,
        "server alive and healthy at the end": healthy,
        "server idle at the end (queue 0, running 0)": idle,
        "no request folder left behind": out.get("left_folders") == 0,
        "no traceback in the server log": out["tracebacks"] == 0,
    }
    if args.rss_slack_mib is not None:
        checks[f"RSS peak of the second half ≤ the first half's + {args.rss_slack_mib:g} MiB"] = mem["within"]
    ok = all(checks.values())
    kinds_table = table(
        ["kind", "expected", "sent", "statuses", "latency p50 s", "latency p99 s"],
        [
            [
                kind,
                expected,
                sum(tally.statuses[kind].values()),
                statuses_text(tally.statuses[kind]) or "–",
                percentile(sorted(tally.latency[kind]), 50) if tally.latency[kind] else "–",
                percentile(sorted(tally.latency[kind]), 99) if tally.latency[kind] else "–",
            ]
            for kind, expected in EXPECTED.items()
        ],
    )
    mib = lambda v: "–" if v is None else f"{v:.0f}"
    summary_rows = [
        ["requests sent / good answers completed", f"{sent} / {tally.completed}"],
        [
            "good answers identical to their reference",
            f"{tally.completed - sum(k in GOOD for k, _, _ in tally.mismatches)} / {tally.completed}",
        ],
        [
            "disconnects: partial answers a prefix of the reference",
            f"{tally.disconnected - sum(k == 'disconnect' for k, _, _ in tally.mismatches)} / {tally.disconnected}",
        ],
        ["mismatches (incl. warm-up vs reference)", mismatches],
        ["5xx / 429 / other unexpected", f"{five} / {too_many} / {sum(sum(b.values()) for b in unexpected.values())}"],
        [
            "TTFT good streamed p50 / p99 s (alone: median)",
            f"{percentile(ttft, 50):.2f} / {percentile(ttft, 99):.2f} ({out['solo_ttft']:.2f})" if ttft else "–",
        ],
        [
            "tokens/s: good answers completed / all the server generated",
            f"{tally.tokens / out['wall']:.1f} / {out.get('generated', 0) / out['wall']:.1f}",
        ],
        ["tokens/s of one request alone (reference run)", f"{out['solo_tokens_per_s']:.1f}"],
        [
            "server RSS MiB: start / max / end",
            f"{mem['start']:.0f} / {mem['max']:.0f} / {mem['end']:.0f}",
        ],
        [
            "server RSS MiB: first minute max / max after it",
            f"{mem['first_minute_max']:.0f} / {mib(mem['later_max'])}",
        ],
        [
            "server RSS MiB: max of the first / second half (growth)",
            f"{mem['halves'][0]:.0f} / {mib(mem['halves'][1])} "
            + ("" if mem["growth"] is None else f"({mem['growth']:+.0f})"),
        ],
        [
            "server RSS MiB each minute from the start, then at the end",
            " → ".join(f"{m:.0f}" for m in mem["by_minute"]),
        ],
        ["server RSS trend over the second half", "–" if mem["slope"] is None else f"{mem['slope']:+.1f} MiB/min"],
        ["server threads: start / max / end", " / ".join(map(str, mem["threads"]))],
        ["server open fds: start / max / end", " / ".join(map(str, mem["fds"]))],
        [
            "server /metrics requests by status (soak)",
            ", ".join(f"{s}: {n}" for s, n in sorted(out.get("statuses", {}).items())) or "–",
        ],
        [
            "server /metrics cancelled by reason (all)",
            ", ".join(f"{r}: {n}" for r, n in out.get("cancelled", {}).items()) or "none",
        ],
        ["/health at the end", out["health"][1].strip() if out["alive"] else "server died"],
    ]
    summary = table(["measure", "value"], summary_rows)
    verdict = "; ".join(f"{name}: {'yes' if passed else 'NO'}" for name, passed in checks.items())
    notes = (
        f"One `specvlm serve` (bundled {args.family} pair, speculative, default --max-batch 16 / --max-queue 64, "
        f"--max-request-bytes {MAX_REQUEST_BYTES >> 20} MiB, torch threads {args.threads}, OMP_WAIT_POLICY=PASSIVE; "
        f"extra options: {args.server_args or 'none'}). {len(out['references'])} distinct good requests (per "
        f"{QUESTION_KIND} clip: its question alone, and a system + user + assistant + user conversation), each "
        f"first run alone for its reference (after one warm-up request); then {args.clients} client threads for "
        f"{args.duration:g} s "
        f"(wall {out['wall']:.0f} s with the last requests), each drawing requests by weight "
        f"({', '.join(f'{k} {w}' for k, w in WEIGHTS.items())}); greedy, ignore_eos, {args.max_tokens} new tokens. "
        f"Latency: request sent to its end (a disconnect: to the close); TTFT: to the first content chunk, queueing "
        f"included. Server RSS / threads / fds sampled from /proc every {args.sample_s:g} s "
        f"({len(out['samples'])} samples). Checks: {verdict}."
    )
    print(kinds_table + "\n\n" + summary + "\n\n" + notes)
    if tally.mismatches:
        print("mismatches (kind, prompt, text):", *tally.mismatches[:5], sep="\n  ", file=sys.stderr)
    if not ok:
        print(f"SOAK FAILED; server log: {out['log']}", file=sys.stderr)
    if args.record:
        record(
            "serve-soak",
            f"specvlm serve soak: {args.clients} clients for {args.duration:g} s, good, disconnecting and hostile "
            "requests (CPU)",
            f"{notes}\n\n{kinds_table}\n\n{summary}",
        )
    return dict(ok=ok, checks=checks, mismatches=mismatches, memory=mem, sent=sent, machine=machine(), out=out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen2_5_vl", choices=("qwen2_5_vl", "llava_onevision"))
    parser.add_argument("--duration", type=float, default=300, help="seconds the clients keep sending (default 300)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent client threads (default 64)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per good answer (ignore_eos: exactly)")
    parser.add_argument("--sample-s", type=float, default=5, help="seconds between memory samples (default 5)")
    parser.add_argument(
        "--rss-slack-mib",
        type=float,
        default=None,
        metavar="N",
        help="fail when the RSS peak of the soak's second half is more than N MiB above the first half's "
        "(default: report it only)",
    )
    parser.add_argument("--server-args", default="", help="more `specvlm serve` options")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clients' draws")
    parser.add_argument("--record", action="store_true", help="write the tables to docs/BENCHMARKS.md (serve-soak)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.clients < 1 or args.max_tokens < DISCONNECT_AFTER + 1 or args.sample_s <= 0:
        parser.error(f"--duration and --sample-s must be > 0, --clients >= 1, --max-tokens >= {DISCONNECT_AFTER + 1}")
    import torch

    from specvlm.testbed.assets import bundled_pair, sample_clips

    torch.set_num_threads(args.threads)  # what the recorded machine line reports: the server's setting
    target, draft = bundled_pair(args.family)
    clips = sample_clips(kind=QUESTION_KIND)
    follow_ups = {}
    for row in sample_clips():
        if row["kind"] != QUESTION_KIND:
            follow_ups.setdefault(row["clip"], row)
    prompts = good_prompts(clips, follow_ups)
    workdir = Path(tempfile.mkdtemp(prefix="soak-serve-"))
    result = report(soak(args, target, draft, prompts, workdir), args)
    if result["ok"]:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
