"""Loading models and tokenizers from a local folder or a Hugging Face hub id, with one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .adapters import ADAPTERS
from .errors import SpecVLMError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_hub_id(name: str) -> bool:
    """`org/name`, as the hub spells a repository (a local path never looks like that here: it exists)."""
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "/"))


def resolve(name: str) -> str:
    """A local model folder, or a hub id (`org/name`) when no such folder exists."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SpecVLMError(f"{name}: not a model folder (it is a file)")
        if not (path / "config.json").is_file():
            raise SpecVLMError(f"{name}: not a model folder (no config.json)")
        return str(path)
    if is_hub_id(name):
        return name
    raise SpecVLMError(f"model folder {name} does not exist")


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecVLMError(f"--device {device}: no CUDA device is available")
    return device


def load_config(name: str):
    """The model's config (cheap: no weights), checked to be a family specvlm supports."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve(name))
    except (OSError, ValueError) as err:
        raise SpecVLMError(f"cannot read the model config of {name}: {str(err).splitlines()[0]}") from None
    if config.model_type not in ADAPTERS:
        raise SpecVLMError(f"{name} is a {config.model_type!r} model; specvlm supports {', '.join(sorted(ADAPTERS))}")
    return config


def load_model(name: str, dtype: str = "auto", device: str = "auto", tensor_parallel: bool = False):
    """`AutoModelForImageTextToText.from_pretrained`, spread over all GPUs (`device_map="auto"`) on CUDA; with
    `tensor_parallel` (a target under torchrun) split over the job's ranks by transformers' TP plan instead, each
    rank holding its shard on its own device."""
    from transformers import AutoModelForImageTextToText

    where = resolve(name)
    load_config(name)
    device = pick_device(device)
    kwargs = {"dtype": _DTYPES[dtype] if dtype in _DTYPES else ("auto" if device != "cpu" else torch.float32)}
    if tensor_parallel:
        kwargs.update(_tensor_parallel_plan())
        from .launcher import is_leader

        if not is_leader():  # rank 0 alone speaks: no second set of loading bars from the other ranks
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
    elif device == "cuda":
        kwargs["device_map"] = "auto"
    try:
        model = AutoModelForImageTextToText.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as err:
        raise SpecVLMError(f"cannot load {name}: {str(err).splitlines()[0]}") from None
    if tensor_parallel:
        from .engine.distributed import leave_group_at_exit

        leave_group_at_exit()
    elif device not in ("cpu", "cuda"):
        model = model.to(device)
    return model.eval()


def _tensor_parallel_plan() -> dict:
    """from_pretrained's keywords for the model's own TP plan (transformers >= 5.5 spells it DistributedConfig)."""
    try:
        from transformers import DistributedConfig

        return {"distributed_config": DistributedConfig(tp_plan="auto")}
    except ImportError:
        return {"tp_plan": "auto"}


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve(name))
    except (OSError, ValueError) as err:
        raise SpecVLMError(f"cannot load the tokenizer of {name}: {str(err).splitlines()[0]}") from None
