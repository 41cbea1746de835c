"""Benchmarks: dataset loaders (`datasets`), method names (`methods`), one timed generation (`measure`), the
harness behind `specvlm bench` (`runner.run_bench`) and its report (`report`: pure arithmetic, table, plots).

    from specvlm.bench import load_dataset, run_bench
    records = load_dataset("mvbench", "/data/MVBench", paper=True, limit=10)
    summary = run_bench("testbed:data/world", "models/target", "runs/b1", draft="models/draft", limit=4)
"""

from .datasets import DatasetError, load_dataset
from .runner import run_bench

__all__ = ["DatasetError", "load_dataset", "run_bench"]
