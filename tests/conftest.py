"""Session settings and fixtures only. conftest.py is pytest's plugin file, loaded under a module name pytest picks
(two conftest.py files would clash as "conftest"); helpers that test files import by name live in helpers.py."""

import os

import pytest
import torch

from specvlm.tiny import make_inputs

from helpers import model

torch.set_grad_enabled(False)
# `make test` runs two pytest-xdist workers on the two cores: one torch thread each (tiny models run faster on one
# thread than on two contended ones anyway); a plain `pytest` run uses both threads.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


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
