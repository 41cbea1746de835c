"""Run by `torchrun --nproc-per-node 2` from test_tensor_parallel.py: each rank loads the target split by
transformers' TP plan and decodes every case; rank r writes OUT/rank{r}.json with the tokens, and the attention
scores its capture gives for one prompt (summed over the ranks' heads)."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModelForImageTextToText

from specvlm import SpeculativeGenerator
from specvlm.adapters import adapter_for
from specvlm.adapters.capture import AttentionCapture
from specvlm.cli import _end_a_rank
from specvlm.drafters.eagle import EagleHead
from specvlm.drafters.eagle3 import Eagle3Head
from specvlm.tiny import make_inputs


def main(root: Path, out: Path) -> None:
    results = {}
    for family in ("qwen2_5_vl", "llava_onevision"):
        target = AutoModelForImageTextToText.from_pretrained(root / family, dtype=torch.float32, tp_plan="auto")
        draft = AutoModelForImageTextToText.from_pretrained(root / f"{family}_draft", dtype=torch.float32)
        rank = dist.get_rank()
        adapter = adapter_for(target)
        results[f"{family}/sharded"] = adapter.tp_group is not None
        drafters = {
            "draft": (draft, dict(tree="static", engine="fast")),
            "self-pruned": ("self", dict(pruning="specvlm", visual_keep_ratio=0.3)),
            "eagle2": (EagleHead.init_for(target, seed=0), dict(tree="dynamic")),
            "eagle3": (Eagle3Head.init_for(target, seed=0), dict(tree="chain", engine="fast")),
        }
        if family == "qwen2_5_vl":  # compiled steps over DTensor shards (one family: compiling costs ~1 min)
            drafters["compiled"] = (draft, dict(tree="static", engine="fast", compile=True))
        for kind in ("video", "image"):
            inputs = make_inputs(family, kind)
            for name, (drafter, options) in drafters.items():
                gen = SpeculativeGenerator(target, drafter, **options)
                out_ = gen.generate(**inputs, max_new_tokens=12, do_sample=False)
                results[f"{family}/{kind}/{name}"] = out_.token_ids
            torch.manual_seed(1000 + rank)  # each rank's own global RNG: only rank 0's draws may count
            sampled = SpeculativeGenerator(target, draft).generate(
                **inputs, max_new_tokens=12, do_sample=True, temperature=1.0, top_k=0
            )
            results[f"{family}/{kind}/sampled"] = sampled.token_ids
        gen = SpeculativeGenerator(target, draft)  # a running batch of rows of different lengths, as serve keeps
        batch = gen.batch(2)
        rows = [
            batch.add(gen.request(**make_inputs(family, kind), max_new_tokens=12, do_sample=False))[0]
            for kind in ("video", "image")
        ]
        while len(batch):
            batch.step()
        results[f"{family}/batch"] = [row.tokens for row in rows]
        prompt = adapter.prepare(make_inputs(family, "video"))
        visual = prompt.visual_mask.nonzero().flatten()
        with AttentionCapture(adapter, int(visual.max()) + 1, visual) as capture:
            adapter.forward(prompt.embeds, prompt.positions, adapter.new_cache(), last_only=True)
        results[f"{family}/scores"] = capture.scores.tolist()
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
    _end_a_rank(0)  # as the CLI's ranks end: the group destroyed, no finalization (it could abort a rank in C++)
