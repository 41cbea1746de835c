"""Session settings and fixtures only. conftest.py is pytest's plugin file, loaded under a module name pytest picks
(two conftest.py files would clash as "conftest"); helpers that test files import by name live in helpers.py."""

import os
from types import MappingProxyType

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


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    """Self-made media files, written once per worker and shared by every module: tests read them and never write
    into the folder (a test that needs a file of its own makes it under tmp_path).
      clip.mp4         24 `index_frames` of 48 x 64 at 8 fps (3 s)
      clip_30.mp4      30 `index_frames` of 48 x 64 at 10 fps (3 s)
      clip_90x120.mp4  30 `index_frames` of 90 x 120 at 10 fps (3 s)
      picture.png      70 x 90 RGB gradients
      big.png          200 x 300, flat grey
      corrupt.mp4      256 zero bytes under a video extension
      notes.txt        text, not a video"""
    import numpy as np
    from PIL import Image

    from specvlm.inputs.testing import index_frames, write_video

    root = tmp_path_factory.mktemp("media")
    write_video(root / "clip.mp4", index_frames(24, 48, 64), fps=8)
    write_video(root / "clip_30.mp4", index_frames(30, 48, 64), fps=10)
    write_video(root / "clip_90x120.mp4", index_frames(30, 90, 120), fps=10)
    yy, xx = np.mgrid[0:70, 0:90]
    Image.fromarray(np.stack([xx * 2, yy * 3, xx + yy], -1).astype(np.uint8)).save(root / "picture.png")
    Image.fromarray(np.full((200, 300, 3), 60, np.uint8)).save(root / "big.png")
    (root / "corrupt.mp4").write_bytes(b"\0" * 256)
    (root / "notes.txt").write_text("not a video")
    return root


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """Model folders on disk, written once per worker and shared read-only (a mapping that cannot be changed; tests
    never write into the folders). By name:
      qwen, qwen_draft, onevision, onevision_draft
          checkpoints as users have them: weights + tokenizer + processor files (the drafts: seed 1, hidden 32)
      onevision_draft_bpe          onevision_draft with another vocabulary (fewer merges, permuted ids)
      qwen2_5_vl, qwen2_vl, llava_onevision
          tokenizer + processor files only, no weights
      qwen_plain, onevision_plain  as those, without a chat template (the fallback prompt)
      qwen_small                   qwen2_5_vl's with max_pixels 56 * 56"""
    from specvlm.inputs.testing import save_tiny_processor

    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, family, kw in (
        ("qwen", "qwen2_5_vl", {}),
        ("qwen_draft", "qwen2_5_vl", dict(seed=1, hidden=32)),
        ("onevision", "llava_onevision", {}),
        ("onevision_draft", "llava_onevision", dict(seed=1, hidden=32)),
    ):
        checkpoint = model(family, **kw)
        checkpoint.save_pretrained(root / name)
        out[name] = save_tiny_processor(root / name, family, checkpoint)
    checkpoint = model("llava_onevision", seed=1, hidden=32)
    checkpoint.save_pretrained(root / "onevision_draft_bpe")
    out["onevision_draft_bpe"] = save_tiny_processor(
        root / "onevision_draft_bpe", "llava_onevision", checkpoint, tokenizer_options=dict(merges=60, shuffle=3)
    )
    for family in ("qwen2_5_vl", "qwen2_vl", "llava_onevision"):
        out[family] = save_tiny_processor(root / family, family)
    for name, family, kw in (
        ("qwen_plain", "qwen2_5_vl", dict(chat_template=False)),
        ("onevision_plain", "llava_onevision", dict(chat_template=False)),
        ("qwen_small", "qwen2_5_vl", dict(max_pixels=56 * 56)),
    ):
        out[name] = save_tiny_processor(root / name, family, **kw)
    return MappingProxyType(out)


@pytest.fixture
def tiny():
    return model


@pytest.fixture
def inputs():
    return make_inputs
