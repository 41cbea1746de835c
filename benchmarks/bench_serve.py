"""`specvlm serve` under load: N concurrent streaming clients × M requests each, speculative decoding (generate's
default static tree; a chain that stops when the draft doubts, the CPU's best in bench-confidence) and the target
alone (`--draft none`: the target's own HF `generate` behind the same server) side by side.

    python benchmarks/bench_serve.py [--family qwen2_5_vl] [--clients 4] [--requests 2] [--rounds 2]
                                     [--max-tokens 64] [--configs speculative,speculative-conf,target-only]
                                     [--server-args "..."] [--threads 1] [--record]

Every configuration gets its own server process (the bundled testbed pair, greedy); all start together and get one
warm-up request per clip. Then, per round, each configuration in turn (the order rotated every round, so drifting
machine load hits them alike) takes a burst: N clients each send M requests one after the other, cycling over the
bundled caption clips (base64 data URLs, as a remote client sends them). `ignore_eos` makes every answer exactly
--max-tokens long, so every configuration generates the same tokens. Per request: time to first token (first
content chunk, queueing included) and latency (to the last chunk); per configuration: requests/s and generated
tokens/s over the summed wall time of its bursts. Every answer is checked against the target-only server's for the
same clip (lossless).
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import machine, record, table

QUESTION_KIND = "caption"
CONFIGS = {  # name -> `specvlm serve` options; {draft}: the bundled draft folder
    "speculative": ["--draft", "{draft}"],                                                   # generate's defaults
    "speculative-conf": ["--draft", "{draft}", "--tree", "chain", "--confidence-threshold", "0.4"],   # CPU's best
    "target-only": ["--draft", "none"],
}
STATS = ("inputs_s", "prefill_s", "decode_s")   # worker seconds per request, from the response's "specvlm" object


class Server:
    """One `specvlm serve --port 0` process, its log in `log`."""

    def __init__(self, target, options: list[str], log: Path, threads: int):
        # torch reads OMP_NUM_THREADS when it loads; PASSIVE: OpenMP threads sleep instead of spinning at
        # barriers, which on shared cores costs many times the work (docs/DESIGN.md, Testbed)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "specvlm", "serve", "--target", str(target), "--port", "0",
                 "--served-model-name", "bench", "--log-level", "warning", *options],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def client(self, timeout: float = 300):
        import openai

        deadline = time.monotonic() + timeout
        while not (found := re.search(r"listening on (http://\S+)/v1", self.log.read_text(errors="replace"))):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        return openai.OpenAI(base_url=found.group(1) + "/v1", api_key="unused", max_retries=0, timeout=600)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)


def ask(client, messages, max_tokens: int) -> dict:
    """One streamed request: its answer, time to first token, latency and the server's statistics."""
    sent = time.perf_counter()
    first = None
    text, usage, stats = [], None, {}
    for chunk in client.chat.completions.create(model="bench", messages=messages, max_tokens=max_tokens,
                                                temperature=0, stream=True, stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage, stats = chunk.usage, chunk.model_extra["specvlm"]
    return dict(text="".join(text), ttft=first - sent, latency=time.perf_counter() - sent,
                tokens=usage.completion_tokens, tau=stats.get("tau"), **{key: stats[key] for key in STATS})


def burst(client, prompts: list, clients: int, requests: int, max_tokens: int) -> tuple[list[dict], float]:
    """`clients` threads each sending `requests` requests in turn: (per-request results, wall seconds)."""
    results: list[dict] = []
    lock = threading.Lock()

    def client_loop(c: int) -> None:
        for r in range(requests):
            index = (c * requests + r) % len(prompts)
            result = dict(ask(client, prompts[index], max_tokens), prompt=index)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - started


def summary(name: str, results: list[dict], wall: float, answers: dict) -> dict:
    ttft, latency = sorted(r["ttft"] for r in results), sorted(r["latency"] for r in results)
    taus = [r["tau"] for r in results if r["tau"] is not None]
    return dict(name=name, answers=answers, consistent=all(r["text"] == answers[r["prompt"]] for r in results),
                requests=len(results), rps=len(results) / wall, tokens_per_s=sum(r["tokens"] for r in results) / wall,
                ttft_p50=percentile(ttft, 50), ttft_p95=percentile(ttft, 95), latency_p50=percentile(latency, 50),
                latency_p95=percentile(latency, 95), tau=statistics.mean(taus) if taus else None,
                **{key: statistics.mean(r[key] for r in results) for key in STATS})


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted `values`."""
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))]


def measure(names: list[str], target, draft, prompts: list, args, workdir: Path) -> list[dict]:
    extra = shlex.split(args.server_args)
    servers = {name: Server(target, [o.format(draft=draft) for o in CONFIGS[name]] + extra,
                            workdir / f"{name}.log", args.threads) for name in names}
    try:
        clients = {name: server.client() for name, server in servers.items()}
        answers = {name: {i: ask(client, messages, args.max_tokens)["text"] for i, messages in enumerate(prompts)}
                   for name, client in clients.items()}   # also the warm-up
        results = {name: [] for name in names}
        walls = dict.fromkeys(names, 0.0)
        for round_ in range(args.rounds):
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                done, wall = burst(clients[name], prompts, args.clients, args.requests, args.max_tokens)
                results[name] += done
                walls[name] += wall
    finally:
        for server in servers.values():
            server.stop()
    return [summary(name, results[name], walls[name], answers[name]) for name in names]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen2_5_vl", choices=("qwen2_5_vl", "llava_onevision"))
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--requests", type=int, default=2, help="requests per client and round, one after another")
    parser.add_argument("--rounds", type=int, default=2, help="bursts per configuration, interleaved (default 2)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per answer (ignore_eos: exactly)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"which of {', '.join(CONFIGS)}")
    parser.add_argument("--server-args", default="", help="more `specvlm serve` options for every configuration, "
                                                          "e.g. \"--compile on\"")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server (default 1)")
    parser.add_argument("--record", action="store_true", help="write the table to docs/BENCHMARKS.md (serve)")
    args = parser.parse_args(argv)
    import torch

    from specvlm.testbed.assets import bundled_pair, sample_clips

    torch.set_num_threads(args.threads)   # what the recorded machine line reports: the servers' setting
    names = args.configs.split(",")
    unknown = set(names) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown --configs {', '.join(sorted(unknown))}; choose from {', '.join(CONFIGS)}")
    target, draft = bundled_pair(args.family)
    clips = sample_clips(kind=QUESTION_KIND)
    prompts = [[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," +
                                            base64.b64encode(Path(c["video"]).read_bytes()).decode()}},
        {"type": "text", "text": c["question"]}]}] for c in clips]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as workdir:
        rows = measure(names, target, draft, prompts, args, Path(workdir))
    return report(rows, args, len(clips))


def report(rows: list[dict], args, clips: int) -> dict:
    base = next((r for r in rows if r["name"] == "target-only"), None)
    lossless = None if base is None else all(r["answers"] == base["answers"] for r in rows)
    body = table(["server", "requests", "requests/s", "tokens/s", "TTFT p50 s", "TTFT p95 s", "latency p50 s",
                  "latency p95 s", "τ", "vs target-only (tokens/s)",
                  "worker s per request: inputs / prefill / decode"],
                 [[r["name"], r["requests"], r["rps"], r["tokens_per_s"], r["ttft_p50"], r["ttft_p95"],
                   r["latency_p50"], r["latency_p95"], "–" if r["tau"] is None else r["tau"],
                   "–" if base is None else f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}×",
                   " / ".join(f"{r[key]:.2f}" for key in STATS)] for r in rows])
    notes = (f"{args.clients} concurrent streaming clients × {args.requests} requests each, per burst; "
             f"{args.rounds} bursts per server, interleaved (order rotated each round); {clips} bundled "
             f"{QUESTION_KIND} clips ({args.family} pair, 8 frames, sent as base64 data URLs), greedy, exactly "
             f"{args.max_tokens} new tokens per answer (ignore_eos); one warm-up request per clip first. One model "
             "worker per server (batch 1): requests queue, so TTFT includes waiting. Each server: torch threads "
             f"{args.threads}, OMP_WAIT_POLICY=PASSIVE; extra options: {args.server_args or 'none'}. Worker seconds "
             "per request (means, from the response's `specvlm` stats): inputs = video decode + processor, prefill "
             "= to the first token, decode = the rest. "
             + ("Every answer is identical to the target-only server's for its clip."
                if lossless else "" if lossless is None else "ANSWERS DIFFER from the target-only server's!")
             + ("" if all(r["consistent"] for r in rows) else " Some repeated requests answered differently!"))
    print(body + "\n\n" + notes)
    if args.record:
        record("serve", "specvlm serve under concurrent clients: speculative vs target-only (CPU)",
               f"{notes}\n\n{body}")
    return {"rows": rows, "lossless": lossless, "machine": machine()}


if __name__ == "__main__":
    main()
