"""DecodeConfig: the generator's options checked once, with errors spelled as the caller spells the option."""

import argparse

import pytest

from specvlm import DecodeConfig, SpeculativeGenerator, SpecVLMError
from specvlm.options import flag


@pytest.mark.parametrize(
    "options,library,cli",
    [
        (dict(num_draft_tokens=0), "num_draft_tokens", "--num-draft-tokens"),
        (dict(confidence_threshold=1.0), "confidence_threshold must be in [0, 1)", "--confidence-threshold must be"),
        (
            dict(pruning="specvlm", visual_keep_ratio=0.0),
            "visual_keep_ratio must be in (0, 1]",
            "--visual-keep-ratio must be in (0, 1]",
        ),
        (dict(visual_keep_ratio=0.5), "pruning='specvlm'", "--pruning specvlm"),
        (dict(pruning="specvlm", stage1_mass=2.0), "stage1_mass (λ)", "--stage1-mass (λ)"),
        (dict(engine="turbo"), "engine must be 'fast' or 'eager'", "--engine must be"),
    ],
)
def test_errors_name_the_option_as_the_caller_spells_it(options, library, cli):
    with pytest.raises(SpecVLMError, match=None) as python_side:
        DecodeConfig(**options)
    assert library in str(python_side.value) and "--" not in str(python_side.value)
    with pytest.raises(SpecVLMError) as flag_side:
        DecodeConfig(**options, spell=flag)
    assert cli in str(flag_side.value)


def test_from_args_reads_the_flags():
    args = argparse.Namespace(
        tree="chain",
        num_draft_tokens=3,
        tree_top_k=10,
        tree_depth=6,
        tree_total_tokens=60,
        confidence_threshold=0.4,
        pruning="specvlm",
        visual_keep_ratio=0.25,
        stage1_mass=0.4,
        draft_positions=None,
        engine="eager",
        compile="off",
        seed=7,
    )
    config = DecodeConfig.from_args(args)
    assert config == DecodeConfig(
        tree="chain",
        num_draft_tokens=3,
        confidence_threshold=0.4,
        pruning="specvlm",
        visual_keep_ratio=0.25,
        engine="eager",
        compile=False,
    )
    with pytest.raises(SpecVLMError, match="--num-draft-tokens"):
        DecodeConfig.from_args(argparse.Namespace(**{**vars(args), "num_draft_tokens": 0}))


def test_generator_takes_a_config_or_its_keywords(tiny, inputs):
    target = tiny("qwen2_5_vl")
    config = DecodeConfig(tree="chain", num_draft_tokens=3, pruning="uniform", visual_keep_ratio=0.5)
    from_config = SpeculativeGenerator(target, "self", config=config)
    from_keywords = SpeculativeGenerator(
        target, "self", tree="chain", num_draft_tokens=3, pruning="uniform", visual_keep_ratio=0.5
    )
    assert from_config.config == from_keywords.config == config
    assert from_config.tree == from_keywords.tree and from_config.draft_view == from_keywords.draft_view
    assert (from_config.draft_view.method, from_config.draft_view.keep_ratio) == ("uniform", 0.5)
    video = inputs("qwen2_5_vl", "video")
    assert (
        from_config.generate(**video, max_new_tokens=6).token_ids
        == from_keywords.generate(**video, max_new_tokens=6).token_ids
    )
    with pytest.raises(SpecVLMError, match="not both"):
        SpeculativeGenerator(target, "self", config=config, tree="chain")
    with pytest.raises(SpecVLMError, match=r"unknown options \['num_draft'\]"):
        SpeculativeGenerator(target, "self", num_draft=3)
