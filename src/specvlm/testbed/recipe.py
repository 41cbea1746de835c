"""What the testbed models are: the recipe (sizes, resolution, steps), the shared tokenizer, the model configs and
the checkpoint folders. `train.py` trains them, `build.py` runs the whole build.

Both families use the real HF classes (`LlavaOnevisionForConditionalGeneration`, `Qwen2_5_VLForConditionalGeneration`)
with the tiny-model special-token layout of `specvlm.tiny.special_ids` (specials at the top of the vocabulary), so
`specvlm.inputs.testing.save_tiny_processor` writes their processor files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..inputs.arguments import DEFAULT_NUM_FRAMES

LARGE_BALL_SEED = 10_000  # the warm-up world's seed is the build's + this: never a world the benchmarks render
FAMILIES = ("llava_onevision", "qwen2_5_vl")
# each family's offset in its models' initialisation seeds: fixed, so a family's models are the same whichever other
# families a build trains and in whatever order (Qwen's is 0, as in the one-family builds its bundled pair came from)
FAMILY_SEED = {"qwen2_5_vl": 0, "llava_onevision": 1}
ROLES = ("target", "draft")
SAMPLES_FAMILY = "qwen2_5_vl"  # the demo's: a build's sample clips come from its world when it builds it


@dataclass(frozen=True)
class Arch:
    hidden: int  # text width
    layers: int  # text decoder layers
    heads: int  # attention heads (head_dim = hidden / heads; 64 for both roles)
    kv_heads: int
    vision_width: int  # the model's own vision tower, trained from scratch
    vision_depth: int


@dataclass(frozen=True)
class DenseStage:
    """A stage of dense video steps (`Recipe.dense_stages`): `share` of the video steps, on the turns of `kinds`
    (all the video steps' kinds when empty), with `one_colour` "which colours" only where the answer names one colour
    and the caption only where it does (a clip of one ball: `train.one_ball_captions`; there the reading starts: with
    every answer, "red and blue", it had not after 400 dense steps), its peak learning rate `lr` x `Recipe.lr`."""

    share: float
    kinds: tuple = ()
    one_colour: bool = False
    lr: float = 1.0


@dataclass(frozen=True)
class Recipe:
    """Every knob of a build; `Recipe().scaled(minutes)` is what `specvlm testbed build` trains, a miniature one
    the tests. The defaults are the recipe whose captions read the video (issue 23, trials v16; docs/DESIGN.md,
    Testbed): a 300-step tower on the probe, then frozen; no text steps; every step a clip's 17 one-turn
    conversations holding the video once; the first third of the video steps dense on the captions of one ball at
    the full rate, the rest on every turn at a quarter of it, half of them dense. The knobs the earlier recipes
    used (text steps, packs, the large-ball warm-up) stay, off."""

    n_clips: int = 400  # world size: 80% train, 10% validation, 10% test
    world_size: int = 224  # rendered frame side (pixels)
    # the background each family's world is rendered on (world.WORLD_TEXTURES): "position", whose colour says where a
    # cell is, or "plain" black; the story and words are the same on either. On plain no language model learnt the
    # captions' place words (the towers read the region of 6-7 % of ball cells); on position both towers read 84-86 %,
    # Qwen2.5-VL's target reads the place words and its pair meets issue 23's tau goals on both worlds, while
    # LLaVA-OneVision's draft came to lean on the background itself (SpecVLM keep 0.1 at 0.83x the full video on the
    # unseen world): each family on the background its pair read best on (trials v17; docs/DESIGN.md, Testbed)
    textures: dict = field(default_factory=lambda: {"qwen2_5_vl": "position", "llava_onevision": "plain"})
    clip_frames: tuple = (16, 48)  # (min, max) frames per clip, 8 fps: 2 to 6 seconds
    questions: int = 16  # question conversations per clip (besides the caption), all in one pack
    num_frames: int = DEFAULT_NUM_FRAMES  # frames sampled per clip (the CLI's default)
    ov_image_size: int = 224  # SigLIP input: 16x16 patches -> pooled 8x8 = 64 tokens per frame
    qwen_pixels: int = 336 * 336  # Qwen min_pixels: 224 frames are upscaled to 336 -> 12x12 merged per pair
    vocab: int = 1024
    arch: dict = field(
        default_factory=lambda: {
            "target": Arch(hidden=256, layers=6, heads=4, kv_heads=2, vision_width=96, vision_depth=2),
            "draft": Arch(hidden=128, layers=2, heads=2, kv_heads=1, vision_width=64, vision_depth=1),
        }
    )
    # the curriculum, per role: `vision_steps` of the vision tower + projector alone on the visual-token probe
    # (`vision_batch` clips a step, no language model: `train.pretrain_vision`), then `text_steps` on the caption +
    # questions packs without the video (the model learns to read the prompt: a caption or which kind of answer),
    # then `steps` with the video, the first `question_share` of them on the questions only (0: none; 0.5 left the
    # captions unlearnt: `git show 8b1239d:docs/DESIGN.md`), the rest on the caption + questions packs. In every
    # pack the caption comes first with probability `caption_first` (else anywhere): inference asks for a caption as
    # the first turn right after the video, and with the caption first in only 1 of 17 packs some caption prompts got
    # "One."
    vision_steps: dict = field(default_factory=lambda: {"target": 300, "draft": 300})
    vision_batch: int = 4
    vision_lr: float = 3e-3
    text_steps: dict = field(default_factory=lambda: {"target": 0, "draft": 0})
    # every build replaces these with `scaled(minutes)`'s (the bundle's `scaled(80)`: 1185 target, 592 draft)
    steps: dict = field(default_factory=lambda: {"target": 671, "draft": 335})
    question_share: float = 0.0
    # the large-ball warm-up (issue 23): the first `large_ball_share` of the video steps train on a world of
    # `large_ball_clips` clips whose balls are large (world.SIZES["large"], seed + LARGE_BALL_SEED), the rest on the
    # world itself. A from-scratch language model trained on the small balls alone learns to ignore the visual tokens
    # (at first they are noise: a few percent of them carry anything) and then never reads them; after a few hundred
    # steps on large balls it reads the small ones too (docs/DESIGN.md, Testbed)
    large_ball_clips: int = 160
    large_ball_share: float = 0.0
    # after the warm-up, each small-ball step trains on a large-ball clip instead with this probability: in the
    # minimal run the reading the warm-up starts fades on the small balls alone and grows with the large balls kept
    # on; in the build it fades more slowly (docs/DESIGN.md, Testbed)
    large_ball_mix: float = 0.0
    caption_first: float = 0.5
    # the vision tower and projector stop training after `vision_steps` (the language steps then train the language
    # model alone, and the probe is off: it reads only what the frozen side makes). The large-ball experiment that
    # read the video froze them (docs/DESIGN.md, Testbed)
    freeze_vision: bool = True
    warm_up_kinds: tuple = ()  # the large-ball steps train on these kinds of turn only ("colors", ...; (): all)
    video_kinds: tuple = ()  # and the small-ball steps after them
    # > 0: each step trains this many one-turn conversations of its clip as a batch (the caption and questions
    # drawn at random) instead of one pack of all 17 turns, where every later answer can be read off the earlier
    # ones (the caption tells them all) and the video need not be read
    turns_per_step: int = 17
    # with `turns_per_step`: the step's one-turn conversations as one sequence that holds the video once, each turn
    # after it seeing the video and itself only (train.Formatter.shared): the same losses at about one turn's cost
    shared_video: bool = True
    # with `shared_video`: the video steps begin with `dense_stages` (each its own learning-rate schedule), whose
    # steps see only the visual tokens a ball covers and `dense_keep` of the others (train.dense_visual); after them
    # `dense_mix` of the steps do, at `after_dense_lr` x `lr`. The information made dense without a second world
    # (docs/DESIGN.md, Testbed: with a tower that reads colour at ~98 %, dense steps on the captions of one ball start
    # the reading at 8 frames, and the other kinds join at a quarter of the rate; every kind at once never starts it,
    # and at the same rate the other kinds wipe it out)
    dense_stages: tuple = (DenseStage(0.34, ("caption",), one_colour=True),)  # of DenseStage
    dense_keep: float = 0.1
    dense_mix: float = 0.5
    after_dense_lr: float = 0.25
    lr: dict = field(default_factory=lambda: {"target": 2e-3, "draft": 2e-3})
    probe_weight: float = 1.0  # the visual-token probe's loss (probe.py) next to the answer loss
    distill: float = 0.8  # drafts: answer-token loss = 0.2 cross-entropy + 0.8 KL(target || draft)
    warmup: float = 0.05  # fraction of steps with linear warmup, then cosine to 10%
    eval_clips: int = 30  # validation clips for loss and accuracy
    eval_questions: int = 5  # questions scored per validation clip (its first ones)
    tau_clips: int = 4  # validation clips whose captions measure τ
    tau_tokens: int = 96  # new tokens per τ measurement
    rope_theta: float = 10000.0

    def texture(self, family: str) -> str:
        """The background `family`'s world is rendered on."""
        return self.textures[family]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["arch"] = {k: asdict(v) for k, v in self.arch.items()}
        return d

    def scaled(self, minutes: float) -> Recipe:
        """Video steps for a total budget of `minutes` on 2 CPU cores: about 6 minutes go to the world, the pixel
        caches and the evaluation, the vision and text steps take what they take, the rest trains the targets N
        video steps and the drafts N/2 (one clip per step; a draft step includes its teacher's forward). A function
        of `minutes` only, so the same command gives the same models on the same kind of machine
        (`train.bf16_is_fast` decides the arithmetic)."""
        fixed_s = sum(
            self.text_steps[role] * TEXT_STEP_SECONDS[role]
            + self.vision_steps[role] * VISION_STEP_SECONDS[role] * self.vision_batch / 4
            for role in ROLES
        )
        train_s = max((minutes - 6.0) * 60 - fixed_s, 30.0)
        steps = max(int(train_s / (STEP_SECONDS["target"] + STEP_SECONDS["draft"] / 2)), 30)
        return replace(self, steps={"target": steps, "draft": steps // 2})


def miniature() -> Recipe:
    """A whole build in about a minute: ten clips (the smallest world with a validation and a test clip, indices 8
    and 9), 64-pixel frames, one-layer models, and every stage a build can have, one step or more each: a text step,
    the large-ball warm-up (off in `Recipe()`), the recipe's dense stage (on every caption) and the steps after it.
    For tests and the benchmarks' smoke runs, never for findings."""
    return Recipe(
        n_clips=10,
        world_size=64,
        clip_frames=(16, 18),
        num_frames=4,
        ov_image_size=56,
        qwen_pixels=56 * 56,
        vocab=512,
        arch={"target": Arch(32, 1, 2, 1, 16, 1), "draft": Arch(32, 1, 2, 1, 16, 1)},
        vision_steps={"target": 2, "draft": 2},
        text_steps={"target": 1, "draft": 1},
        steps={"target": 6, "draft": 6},  # 3 on the large-ball world, then 1 in the dense stage, then 2
        large_ball_clips=10,
        large_ball_share=0.5,
        dense_stages=(DenseStage(0.34, ("caption",)),),  # every caption: ten clips may have none of one ball
        eval_clips=1,
        tau_clips=1,
        tau_tokens=4,
    )


# seconds per training step of both families' models on 2 AVX2 cores in fp32 (AMD EPYC, no bf16 units; with AMX
# bf16 a step took ~0.6x this), packs of a caption + 16 questions (~1100 tokens): LLaVA-OV target 0.93, draft
# with its teacher's forward 0.75; Qwen2.5-VL target 1.5, draft 1.2. Text steps (caption + questions, ~500
# tokens, no video): targets 0.45 + 0.5, drafts with the teacher 0.3 + 0.3
STEP_SECONDS = {"target": 0.93 + 1.5, "draft": 0.75 + 1.2}
TEXT_STEP_SECONDS = {"target": 0.45 + 0.5, "draft": 0.3 + 0.3}
VISION_STEP_SECONDS = {"target": 0.35 + 0.5, "draft": 0.2 + 0.3}  # 4 clips, vision tower + projector + probe


def visual_tokens(recipe: Recipe, family: str) -> int:
    """Visual tokens per clip: LLaVA-OV frames x pooled (side/2)^2 + 1 newline; Qwen frames/2 x (h/28)(w/28)."""
    if family == "llava_onevision":
        side = recipe.ov_image_size // 14
        return recipe.num_frames * (-(-side // 2)) ** 2 + 1
    side = _qwen_side(recipe)
    return recipe.num_frames // 2 * (side // 28) ** 2


def _qwen_side(recipe: Recipe) -> int:
    import math

    side = max(round(recipe.world_size / 28) * 28, 28)
    if side * side < recipe.qwen_pixels:  # smart_resize's upscaling branch, square frames
        side = math.ceil(recipe.world_size * math.sqrt(recipe.qwen_pixels / recipe.world_size**2) / 28) * 28
    return side


# ---- tokenizer ----------------------------------------------------------------------------------------------------
def train_bpe(texts: list[str], vocab: int) -> str:
    """A byte-level BPE on the world's text, as a tokenizers JSON string with exactly `vocab - 7` ordinary entries
    (the 7 special tokens are added per family). Deterministic: same texts, same merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    ordinary = vocab - 7
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=ordinary, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        ),
    )
    spec = json.loads(tok.to_str())
    table = spec["model"]["vocab"]
    for i in range(ordinary - len(table)):  # a tiny corpus may not fill the table: pad with unreachable entries
        table[f"<unused{i}>"] = len(table)
    return json.dumps(spec)


def family_tokenizer(bpe_json: str, family: str, vocab: int):
    """The BPE with `family`'s special tokens at `special_ids(vocab)` and its real chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from ..inputs.testing import ONEVISION_CHAT_TEMPLATE, QWEN_CHAT_TEMPLATE, _token_names
    from ..tiny import special_ids

    ids, names = special_ids(vocab), _token_names(family)
    tok = Tokenizer.from_str(bpe_json)
    tok.add_special_tokens(["<|im_start|>"] + [names[k] for k in sorted(ids, key=ids.get)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=names["eos"], pad_token=names["pad"])
    fast.chat_template = ONEVISION_CHAT_TEMPLATE if family == "llava_onevision" else QWEN_CHAT_TEMPLATE
    assert all(fast.convert_tokens_to_ids(names[k]) == i for k, i in ids.items()) and len(fast) == vocab
    return fast


# ---- models -------------------------------------------------------------------------------------------------------
def make_model(recipe: Recipe, family: str, role: str, seed: int):
    """A freshly initialised (seeded) model of `family` with the recipe's `role` sizes."""
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    from ..tiny import special_ids

    a, ids = recipe.arch[role], special_ids(recipe.vocab)
    text = dict(
        vocab_size=recipe.vocab,
        hidden_size=a.hidden,
        intermediate_size=3 * a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        max_position_embeddings=4096,
        eos_token_id=ids["eos"],
        bos_token_id=None,
        pad_token_id=ids["pad"],
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": recipe.rope_theta},
    )
    torch.manual_seed(seed)
    if family == "llava_onevision":
        size = recipe.ov_image_size
        vision = SiglipVisionConfig(
            hidden_size=a.vision_width,
            intermediate_size=3 * a.vision_width,
            num_hidden_layers=a.vision_depth,
            num_attention_heads=2,
            image_size=size,
            patch_size=14,
            vision_use_head=False,
        )
        config = LlavaOnevisionConfig(
            vision_config=vision,
            text_config=Qwen2Config(**text),
            image_token_index=ids["image"],
            video_token_index=ids["video"],
            image_grid_pinpoints=[[size, size], [size, 2 * size], [2 * size, size], [2 * size, 2 * size]],
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        )
        model = LlavaOnevisionForConditionalGeneration(config)
    elif family == "qwen2_5_vl":
        half = a.hidden // a.heads // 2  # M-RoPE (t, h, w) sections sum to head_dim / 2,
        s = 3 * half // 8  # in the real model's 2:3:3 proportion
        text["rope_parameters"]["mrope_section"] = [half - 2 * s, s, s]
        vision = dict(
            depth=a.vision_depth,
            hidden_size=a.vision_width,
            intermediate_size=3 * a.vision_width,
            num_heads=2,
            out_hidden_size=a.hidden,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[a.vision_depth - 1],
            tokens_per_second=2,
        )
        config = Qwen2_5_VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=ids["image"],
            video_token_id=ids["video"],
            vision_start_token_id=ids["vision_start"],
            vision_end_token_id=ids["vision_end"],
        )
        model = Qwen2_5_VLForConditionalGeneration(config)
    else:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    model.generation_config.eos_token_id = ids["eos"]
    model.generation_config.pad_token_id = ids["pad"]
    return model


def save_processor(folder, recipe: Recipe, family: str, tokenizer, model) -> Path:
    """Tokenizer, chat template and image / video processor configs next to the weights. The processor files come
    from `save_tiny_processor` (sized to this recipe); its throwaway tokenizer is then replaced by ours, and the
    video processor remembers the frame count the model was trained on."""
    from ..inputs.testing import save_tiny_processor

    folder = Path(folder)
    save_tiny_processor(
        folder,
        family,
        model=model if family == "llava_onevision" else None,
        vocab=recipe.vocab,
        image_size=recipe.ov_image_size,
        min_pixels=recipe.qwen_pixels,
        max_pixels=max(recipe.qwen_pixels, 448 * 448),
    )
    tokenizer.save_pretrained(folder)
    video_cfg = folder / "video_preprocessor_config.json"
    cfg = json.loads(video_cfg.read_text())
    cfg["num_frames"] = recipe.num_frames
    video_cfg.write_text(json.dumps(cfg, indent=2) + "\n")
    return folder


def save_checkpoint(folder, model, recipe: Recipe, family: str, tokenizer, dtype="float16") -> Path:
    """An HF model folder: config.json, model.safetensors (fp16: half the bytes, ~1e-3 relative rounding, far inside
    what greedy decoding notices once reloaded as float32), generation_config.json, tokenizer and processor."""
    import copy

    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).to(getattr(torch, dtype)).save_pretrained(folder)
    save_processor(folder, recipe, family, tokenizer, model)
    return folder
