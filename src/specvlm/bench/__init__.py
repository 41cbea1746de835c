"""Benchmarks: dataset loaders (`datasets`), method names (`methods`), one timed generation (`measure`), the
harness behind `specvlm bench` (`runner.run_bench`) and its report (`report`: pure arithmetic, table, plots).

    from specvlm.bench import load_dataset, run_bench
    records = load_dataset("mvbench", "/data/MVBench", paper=True, limit=10)
    summary = run_bench("testbed:data/world", "models/target", "runs/b1", draft="models/draft", limit=4)
"""

from .._lazy import lazy_exports

# the module that defines each name, imported on its first use (so the CLI starts without torch)
_EXPORTS = {
    ".datasets": ("DatasetError", "load_dataset"),
    ".runner": ("run_bench",),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
