"""Lazy package exports (PEP 562), so that `specvlm`'s command line starts without importing torch or transformers:
`from specvlm import SpeculativeGenerator` still works, but the module behind a name is imported on first use.
`specvlm --version` and every option error therefore answer in a fraction of a second."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]):
    """(`__getattr__`, `__all__`) for `package`, whose `exports` map modules (relative to the package) to the names
    they define: a name's module is imported on the first access of the name, and the value cached in the
    package."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], package), name)
        setattr(importlib.import_module(package), name, value)
        return value

    return __getattr__, sorted(where)
