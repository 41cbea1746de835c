"""`make demo`: speculative decoding checked against the target, with no downloads.

Until the trained testbed models land, this runs on tiny *random* models of the real Qwen2.5-VL class with an
identical copy as the draft: the copy agrees with the target on every token, so the run shows the engine
accepting whole trees and the wall-clock effect of that on this machine. It says nothing about how often a real
draft agrees with a real target.
"""

from __future__ import annotations

import copy
import time

import torch

from .generator import SpeculativeGenerator
from .tiny import make_inputs, make_model


def _timed(fn, repeats=2):
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return value, best


@torch.no_grad()
def run_demo(max_new_tokens: int = 64) -> int:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print("specvlm demo: tiny RANDOM Qwen2.5-VL models (the trained testbed pair is not bundled yet);")
    print("the draft is an identical copy of the target, so acceptance is total by construction.\n")
    target = make_model("qwen2_5_vl", hidden=384, layers=8, vocab=8192, init=0.05)
    draft = copy.deepcopy(target)
    inputs = make_inputs("qwen2_5_vl", "video", prompt_len=24, frames=8, vocab=8192)
    n_visual = int((inputs["mm_token_type_ids"] > 0).sum())
    print(f"target: {sum(p.numel() for p in target.parameters()) / 1e6:.1f}M parameters, "
          f"prompt {inputs['input_ids'].shape[1]} tokens ({n_visual} visual), {max_new_tokens} new tokens\n")
    options = dict(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=-1)
    plain, plain_s = _timed(lambda: target.generate(**inputs, **options)[0, inputs["input_ids"].shape[1]:].tolist())
    print(f"{'method':<34}{'τ':>6}{'target fwd':>12}{'time':>9}{'speedup':>9}  output")
    print(f"{'target.generate (greedy)':<34}{'-':>6}{len(plain):>12}{plain_s:>8.2f}s{1.0:>8.2f}x")
    all_equal = True
    for label, tree, kw in (("chain γ=4", "chain", dict(num_draft_tokens=4)), ("static tree (EAGLE-1)", "static", {}),
                            ("dynamic tree (EAGLE-2)", "dynamic", dict(tree_depth=6, tree_total_tokens=24))):
        gen = SpeculativeGenerator(target, draft, tree=tree, **kw)
        out, secs = _timed(lambda: gen.generate(**inputs, **options))
        same = out.token_ids == plain
        all_equal &= same
        print(f"{'speculative, ' + label:<34}{out.stats.mean_accepted_tokens:>6.2f}{out.stats.target_forwards:>12}"
              f"{secs:>8.2f}s{plain_s / secs:>8.2f}x  {'identical to target' if same else 'DIFFERENT'}")
    print("\noutput equals target-only decoding:", "yes" if all_equal else "NO")
    return 0 if all_equal else 1
