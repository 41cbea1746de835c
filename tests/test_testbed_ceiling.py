"""The τ ceiling from a world's words (testbed/ceiling.py): the rounds recursion on hand-made and simulated
sequences, the sources of a caption's and an answer's words, and the ratio on hand-made replies."""

import numpy as np
import pytest

from specvlm.testbed.ceiling import expected_rounds, tau_ceiling, token_sources, word_sources


def test_expected_rounds_on_certain_and_hand_computed_sequences():
    assert expected_rounds([1.0] * 12, 5) == 2  # each round: 5 draft tokens and the bonus
    assert expected_rounds([1.0] * 13, 5) == 3  # the last round's single token
    assert expected_rounds([0.0] * 7, 5) == 7  # each round: the target's token alone
    assert expected_rounds([], 5) == 0
    # gamma 1 over two tokens: a match (1/2) ends it in one round (the token and the bonus), a miss needs two
    assert expected_rounds([0.5, 0.5], 1) == 1.5


def simulated_rounds(p: list[float], gamma: int, rng: np.random.Generator) -> int:
    i, rounds = 0, 0
    while i < len(p):
        j = 0
        while j < gamma and i + j < len(p) and rng.random() < p[i + j]:
            j += 1
        i, rounds = i + j + 1, rounds + 1
    return rounds


def test_expected_rounds_is_the_mean_of_simulated_speculation():
    rng = np.random.default_rng(0)
    for gamma in (1, 3, 5):
        p = rng.uniform(0, 1, 23).tolist()
        mean = np.mean([simulated_rounds(p, gamma, rng) for _ in range(20000)])
        assert expected_rounds(p, gamma) == pytest.approx(mean, rel=0.01)


def test_word_sources_of_a_caption_and_of_short_answers():
    text = (
        "There are two balls. The red ball starts at the top left and moves up. "
        "Then the red ball bounces off the top edge and moves down. At the end, the red ball is on the left side."
    )
    tagged = [(text[a:b], s) for a, b, s in word_sources(text)]
    assert tagged == [
        ("two", "count"),
        ("red", "colour"),
        ("at the top left", "place"),
        ("moves up", "motion"),
        ("red", "colour"),
        ("bounces", "event"),
        ("top", "place"),
        ("moves down", "motion"),
        ("red", "colour"),
        ("on the left side", "place"),
    ]
    answers = {"Left.": "motion", "Left side.": "place", "Top left.": "place", "Red.": "colour", "Two.": "count"}
    for answer, source in answers.items():
        assert [s for *_, s in word_sources(answer)] == [source]
    assert word_sources("At the end, no ball is left.") == []  # "left" as in remaining


def test_token_sources_follow_the_words():
    from specvlm.testbed.recipe import family_tokenizer, train_bpe

    texts = ["The red ball starts at the top left and moves up.", "Red.", "Top left."] * 20
    tokenizer = family_tokenizer(train_bpe(texts, 300), "qwen2_5_vl", 300)
    sources = token_sources(texts[0], tokenizer)
    words = tokenizer.convert_ids_to_tokens(tokenizer(texts[0], add_special_tokens=False)["input_ids"])
    assert len(sources) == len(words) and sources[0] == "text" and sources[-1] == "text"  # "The", "."
    tagged = {w.lstrip("Ġ"): s for w, s in zip(words, sources)}
    assert tagged["red"] == "colour" and tagged["moves"] == tagged["up"] == "motion" and tagged["ball"] == "text"


def test_tau_ceiling_on_hand_made_replies():
    text = ["text"] * 11
    both = tau_ceiling([text + ["text"]], {"colour"}, alpha=1.0)
    assert both == {"full": 5.0, "blind": 5.0, "ratio": 1.0}  # nothing the video decides: 2 rounds of 6
    one = tau_ceiling([text[:3] + ["colour"] + text[3:]], {"colour"}, alpha=1.0)
    assert one["full"] == 5.0 and one["blind"] == pytest.approx(12 / 3 - 1)  # the miss costs a round: 4 + 6 + 2
    assert one["ratio"] == pytest.approx(5 / 3)
    late = tau_ceiling([text[:5] + ["colour"] + text[5:]], {"colour"}, alpha=1.0)
    assert late["ratio"] == 1.0  # the sixth token is the round's bonus, the target's own: a blind draft loses nothing
    unread = tau_ceiling([text[:3] + ["place"] + text[3:]], {"colour"}, alpha=1.0)
    assert unread["ratio"] == 1.0  # a source the models cannot read is the text's guess for both
