"""`specvlm serve` under load: N concurrent streaming clients, continuous batching against the same server one
request at a time, and speculation against the target alone batched the same way.

    python benchmarks/bench_serve.py [--family qwen2_5_vl] [--clients 1,4,8,16,32] [--requests 1] [--rounds 3]
                                     [--max-tokens 48] [--configs speculative,target-only,speculative-batch1]
                                     [--server-args "..."] [--threads 2] [--record]

Configurations (each its own `specvlm serve` process on the bundled testbed pair, greedy):
  speculative          the default server: speculative decoding (generate's default static tree), continuous
                       batching (--max-batch 16)
  target-only          --draft none: the target alone, one token a round, batched by the same engine
  speculative-batch1   --max-batch 1: one request at a time, the others queue (the engine before batching)
  speculative-conf, speculative-chain-pruned: other speculative settings (a confidence chain; a γ=5 chain drafting
                       from a SpecVLM-pruned view), on request

All servers start together and get one warm-up request per clip. Then for each client count, per round, each
configuration in turn (the order rotated every round, so drifting machine load hits them alike) takes a burst: N
clients each send --requests requests one after the other, cycling over the bundled caption clips (base64 data URLs,
as a remote client sends them). `ignore_eos` makes every answer exactly --max-tokens long, so every configuration
generates the same tokens. Per burst: generated tokens/s (all tokens / burst wall time); per request: time to first
token (first content chunk, queueing included) and time per output token after the first ((latency - TTFT) /
(tokens - 1)). A row reports the median burst tokens/s with its min-max range over rounds, and p50 / p99 of the
per-request times pooled over rounds. Every answer is checked against the target-only server's for the same clip.
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
    "speculative": ["--draft", "{draft}"],  # generate's defaults, batched
    "target-only": ["--draft", "none"],
    "speculative-batch1": ["--draft", "{draft}", "--max-batch", "1"],  # one request at a time
    "speculative-conf": ["--draft", "{draft}", "--tree", "chain", "--confidence-threshold", "0.4"],
    "speculative-chain-pruned": [
        "--draft",
        "{draft}",
        "--tree",
        "chain",
        "--num-draft-tokens",
        "5",
        "--pruning",
        "specvlm",
    ],  # the CPU's best batched setting
}
DEFAULT_CONFIGS = ("speculative", "target-only", "speculative-batch1")
STATS = ("inputs_s", "prefill_s", "decode_s")  # worker seconds per request, from the response's "specvlm" object


class Server:
    """One `specvlm serve --port 0` process, its log in `log`."""

    def __init__(self, target, options: list[str], log: Path, threads: int):
        # torch reads OMP_NUM_THREADS when it loads; PASSIVE: OpenMP threads sleep instead of spinning at
        # barriers, which on shared cores costs many times the work (docs/DESIGN.md, Testbed)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "specvlm",
                    "serve",
                    "--target",
                    str(target),
                    "--port",
                    "0",
                    "--served-model-name",
                    "bench",
                    "--log-level",
                    "warning",
                    *options,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )

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
    for chunk in client.chat.completions.create(
        model="bench",
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage, stats = chunk.usage, chunk.model_extra["specvlm"]
    return dict(
        text="".join(text),
        ttft=first - sent,
        latency=time.perf_counter() - sent,
        tokens=usage.completion_tokens,
        tau=stats.get("tau"),
        **{key: stats[key] for key in STATS},
    )


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


def summary(name: str, clients: int, bursts: list[tuple[list[dict], float]], answers: dict) -> dict:
    """One row: a configuration at one client count, over its bursts (one per round)."""
    results = [r for done, _ in bursts for r in done]
    rates = sorted(sum(r["tokens"] for r in done) / wall for done, wall in bursts)
    ttft = sorted(r["ttft"] for r in results)
    per_token = sorted((r["latency"] - r["ttft"]) / max(r["tokens"] - 1, 1) for r in results)
    taus = [r["tau"] for r in results if r["tau"] is not None]
    return dict(
        name=name,
        clients=clients,
        answers=answers,
        consistent=all(r["text"] == answers[r["prompt"]] for r in results),
        requests=len(results),
        tokens_per_s=statistics.median(rates),
        tokens_per_s_range=(rates[0], rates[-1]),
        ttft_p50=percentile(ttft, 50),
        ttft_p99=percentile(ttft, 99),
        tpot_p50=percentile(per_token, 50),
        tpot_p99=percentile(per_token, 99),
        tau=statistics.mean(taus) if taus else None,
    )


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted `values`."""
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))]


def measure(names: list[str], target, draft, prompts: list, args, workdir: Path) -> list[dict]:
    extra = shlex.split(args.server_args)
    servers = {
        name: Server(
            target, [o.format(draft=draft) for o in CONFIGS[name]] + extra, workdir / f"{name}.log", args.threads
        )
        for name in names
    }
    rows = []
    try:
        clients = {name: server.client() for name, server in servers.items()}
        answers = {
            name: {i: ask(client, messages, args.max_tokens)["text"] for i, messages in enumerate(prompts)}
            for name, client in clients.items()
        }  # also the warm-up
        for count in args.clients:
            bursts = {name: [] for name in names}
            for round_ in range(args.rounds):
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    bursts[name].append(burst(clients[name], prompts, count, args.requests, args.max_tokens))
            rows += [summary(name, count, bursts[name], answers[name]) for name in names]
            print(f"{count} clients measured", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen2_5_vl", choices=("qwen2_5_vl", "llava_onevision"))
    parser.add_argument(
        "--clients", default="1,4,8,16,32", help="concurrent client counts, comma-separated (default 1,4,8,16,32)"
    )
    parser.add_argument("--requests", type=int, default=1, help="requests per client and burst, one after another")
    parser.add_argument(
        "--rounds", type=int, default=3, help="bursts per configuration and client count, interleaved (default 3)"
    )
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens per answer (ignore_eos: exactly)")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"which of {', '.join(CONFIGS)}")
    parser.add_argument(
        "--server-args", default="", help='more `specvlm serve` options for every configuration, e.g. "--compile on"'
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each server (default 2)")
    parser.add_argument("--record", action="store_true", help="write the table to docs/BENCHMARKS.md (serve)")
    parser.add_argument("--label", default=None, help="record under the section serve-LABEL instead of serve")
    args = parser.parse_args(argv)
    try:
        args.clients = [int(c) for c in args.clients.split(",")]
    except ValueError:
        parser.error(f"--clients takes comma-separated counts, got {args.clients!r}")
    if min(args.clients) < 1 or args.requests < 1 or args.rounds < 1 or args.max_tokens < 2:
        parser.error("--clients, --requests and --rounds must be >= 1, --max-tokens >= 2")
    import torch

    from specvlm.testbed.assets import bundled_pair, sample_clips

    torch.set_num_threads(args.threads)  # what the recorded machine line reports: the servers' setting
    names = args.configs.split(",")
    unknown = set(names) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown --configs {', '.join(sorted(unknown))}; choose from {', '.join(CONFIGS)}")
    target, draft = bundled_pair(args.family)
    clips = sample_clips(kind=QUESTION_KIND)
    prompts = [
        [
            {
                "role": "user",
                "content": [
                    {
                        "type": "video_url",
                        "video_url": {
                            "url": "data:video/mp4;base64," + base64.b64encode(Path(c["video"]).read_bytes()).decode()
                        },
                    },
                    {"type": "text", "text": c["question"]},
                ],
            }
        ]
        for c in clips
    ]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as workdir:
        rows = measure(names, target, draft, prompts, args, Path(workdir))
    return report(rows, args, len(clips))


def report(rows: list[dict], args, clips: int) -> dict:
    by = {(r["name"], r["clients"]): r for r in rows}
    base = {r["clients"]: r for r in rows if r["name"] == "target-only"}
    lossless = None if not base else all(r["answers"] == next(iter(base.values()))["answers"] for r in rows)

    def ratio(r, other):
        o = by.get((other, r["clients"]))
        return "–" if o is None or o is r else f"{r['tokens_per_s'] / o['tokens_per_s']:.2f}×"

    body = table(
        [
            "server",
            "clients",
            "tokens/s (median, min–max)",
            "TTFT p50 s",
            "TTFT p99 s",
            "s/token p50",
            "s/token p99",
            "τ",
            "vs target-only",
            "vs speculative-batch1",
        ],
        [
            [
                r["name"],
                r["clients"],
                f"{r['tokens_per_s']:.1f} ({r['tokens_per_s_range'][0]:.1f}–{r['tokens_per_s_range'][1]:.1f})",
                r["ttft_p50"],
                r["ttft_p99"],
                f"{r['tpot_p50']:.3f}",
                f"{r['tpot_p99']:.3f}",
                "–" if r["tau"] is None else r["tau"],
                ratio(r, "target-only"),
                ratio(r, "speculative-batch1"),
            ]
            for r in rows
        ],
    )
    notes = (
        f"Per client count: {args.rounds} bursts per server, interleaved (order rotated each round); a burst "
        f"is N concurrent streaming clients × {args.requests} request(s) each; {clips} bundled "
        f"{QUESTION_KIND} clips ({args.family} pair, 8 frames, sent as base64 data URLs), greedy, exactly "
        f"{args.max_tokens} new tokens per answer (ignore_eos); one warm-up request per clip first. Tokens/s: "
        "all generated tokens / burst wall time, median and range over the bursts; TTFT (queueing included) and "
        "seconds per output token after the first: p50 / p99 over all requests of the row. Each server: torch "
        f"threads {args.threads}, OMP_WAIT_POLICY=PASSIVE; extra options: {args.server_args or 'none'}. "
        + (
            "Every answer is identical to the target-only server's for its clip."
            if lossless
            else ""
            if lossless is None
            else "ANSWERS DIFFER from the target-only server's!"
        )
        + ("" if all(r["consistent"] for r in rows) else " Some repeated requests answered differently!")
    )
    print(body + "\n\n" + notes)
    if args.record:
        section = "serve" + (f"-{args.label}" if args.label else "")
        record(
            section,
            "specvlm serve under concurrent clients: continuous batching, speculative vs target-only "
            f"(CPU){f', {args.label}' if args.label else ''}",
            f"{notes}\n\n{body}",
        )
    return {"rows": rows, "lossless": lossless, "machine": machine()}


if __name__ == "__main__":
    main()
