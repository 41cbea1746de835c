import functools
import os

import pytest
import torch

from specvlm.tiny import make_inputs, make_model

torch.set_grad_enabled(False)
# `make test` runs two pytest-xdist workers on the two cores: one torch thread each (tiny models run faster on one
# thread than on two contended ones anyway); a plain `pytest` run uses both threads.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@functools.lru_cache(maxsize=None)
def model(family: str, seed: int = 0, **kw):
    """Tiny models are cached per process: building one costs more than a whole short generation."""
    return make_model(family, seed=seed, **kw)


def reference(target, inputs: dict, **kw) -> list[int]:
    """Target-only HF generate, new tokens only."""
    out = target.generate(**inputs, **kw)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run far faster on one thread than on two contended ones; modules that train or time many
    tiny runs opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def hf_media_rules():
    """For tests that compare our image / video loading with transformers' own: specvlm follows the rules of
    transformers >= 5.24 (RGBA composited on white; frame i of n at i * total // n) whatever is installed, so its
    inputs do not change with the installed version; older releases (5.17 and before) dropped alpha and spaced frames
    by total / n, so there the comparison does not apply (our own hand-made expectations still run)."""
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) < Version("5.24"):
        pytest.skip(f"transformers {transformers.__version__} predates the media rules specvlm follows (5.24)")


@pytest.fixture
def tiny():
    return model


@pytest.fixture
def inputs():
    return make_inputs


def chi2_pvalue(samples: list[int], probs) -> float:
    """Goodness of fit of integer samples to `probs`; cells expected to hold fewer than 5 samples are pooled."""
    import numpy as np
    from scipy.stats import chisquare

    probs = np.asarray(probs, dtype=float)
    probs = probs / probs.sum()
    counts = np.bincount(samples, minlength=len(probs)).astype(float)
    if counts[probs == 0].sum() > 0:
        return 0.0   # a token the distribution cannot produce
    expected = probs * len(samples)
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(chisquare(obs, exp).pvalue)
