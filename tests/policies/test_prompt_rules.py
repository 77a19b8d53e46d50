"""The semantic prompt rule as pure logic, on a bag-of-words embedder (the real model is tested in
tests/detectors/test_prompt_embedder.py): categories, thresholds, the keyword rule first."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from consentry.gateway.testing import WordsEmbedder
from consentry.policies import codes
from consentry.policies.policy import parse_policy
from consentry.policies.prompt_rules import (
    WINDOW_WORDS,
    SemanticRule,
    meaning_parts,
    meaning_text,
    screen_prompt,
    semantic_verdict,
)

POLICY = parse_policy(
    """
version = "t"
[prompt]
deny_terms = ["forbidden"]
semantic = true
semantic_threshold = 0.6
[[prompt.categories]]
name = "weather"
examples = ["heavy rain and thunder storm", "snow blizzard"]
[[prompt.categories]]
name = "fruit"
examples = ["ripe banana apple pear"]
threshold = 0.9
""",
    "t",
)


class CountingEmbedder(WordsEmbedder):
    def __init__(self) -> None:
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts.extend(texts)
        return super().embed(texts)


@pytest.mark.parametrize(
    ("prompt", "embedded"),
    [
        ("A photo of HER in the rain", "rain"),  # framing words go
        ("n4k3d  wr3stl3r", "naked wrestler"),  # leetspeak read as letters
        ("a n u d e statue, s.e.x", "nude statue sex"),  # spelled-out words joined
        ("a 1990s portrait in 4k, 35mm", "1990s 4k 35mm"),  # a word starting with a digit stays
        ("a portrait of her", ""),  # nothing but framing: nothing to compare
    ],
)
def test_what_the_rule_embeds(prompt: str, embedded: str) -> None:
    assert meaning_text(prompt) == embedded


def test_a_prompt_is_scored_against_every_example_and_named_by_its_closest_category() -> None:
    rule = SemanticRule.build(POLICY.prompt, WordsEmbedder())
    match = rule.check("a thunder storm with heavy rain over her")
    assert match is not None and match.category == "weather" and match.denied
    assert match.example == "heavy rain and thunder storm" and match.threshold == 0.6
    verdict = semantic_verdict(match)
    assert not verdict.allowed and verdict.code == codes.CONSENT_PROMPT_DENIED
    assert "'weather'" in verdict.reason and verdict.scores["similarity"] == pytest.approx(match.score)


def test_a_category_threshold_overrides_the_default() -> None:
    rule = SemanticRule.build(POLICY.prompt, WordsEmbedder())
    match = rule.check("ripe banana and apple")  # 3 of 4 words: cosine 0.87, under fruit's 0.9
    assert match is not None and match.category == "fruit"
    assert 0.6 < match.score < 0.9 and not match.denied
    assert semantic_verdict(match).allowed


def test_the_keyword_rule_runs_first_and_needs_no_embedding() -> None:
    embedder = CountingEmbedder()
    rule = SemanticRule.build(POLICY.prompt, embedder)
    examples = len(embedder.texts)
    screen = screen_prompt("a forbidden storm", POLICY.deny_terms_for(None), rule)
    assert screen.rule == "deny_terms" and screen.terms == ("forbidden",) and len(embedder.texts) == examples
    shown = screen_prompt("snow blizzard tonight", POLICY.deny_terms_for(None), rule).as_dict()
    assert shown["refused"] is True and shown["code"] == codes.CONSENT_PROMPT_DENIED
    assert shown["category"] == "weather" and shown["rule"] == "semantic" and shown["score"] > 0.6
    assert embedder.texts[examples:] == ["snow blizzard tonight"]


def test_a_harmless_prompt_passes_with_its_closest_category_reported() -> None:
    rule = SemanticRule.build(POLICY.prompt, WordsEmbedder())
    shown = screen_prompt("a quiet library", POLICY.deny_terms_for(None), rule).as_dict()
    assert shown["refused"] is False and shown["code"] == codes.OK and shown["category"] is None
    assert shown["closest"] in ("weather", "fruit") and shown["score"] < 0.6
    assert screen_prompt("a portrait of her", (), rule).match is None  # nothing to compare


def test_a_prompt_is_embedded_whole_by_clause_and_by_window() -> None:
    assert meaning_parts("a portrait of her") == []
    assert meaning_parts("her in the rain") == ["rain"]  # one clause: embedded once
    parts = meaning_parts("misty lake, pine forest, thunder storm")
    assert parts == ["misty lake pine forest thunder storm", "misty lake", "pine forest", "thunder storm"]
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    windows = [p for p in meaning_parts(" ".join(words)) if len(p.split()) == WINDOW_WORDS]
    assert windows == [" ".join(words[0:6]), " ".join(words[3:9])]


def test_a_request_padded_with_a_harmless_scene_is_still_found() -> None:
    rule = SemanticRule.build(POLICY.prompt, WordsEmbedder())
    padded = "quiet village street at dusk, cobblestones, warm lamps, old bakery, snow blizzard"
    match = rule.check(padded)
    assert match is not None and match.category == "weather" and match.score == pytest.approx(1.0)
    whole = WordsEmbedder().embed([meaning_text(padded), "snow blizzard"])
    assert float(whole[0] @ whole[1]) < 0.6  # the whole prompt alone would have passed
