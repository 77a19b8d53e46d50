"""Prompt rules by meaning: a prompt close to a deny category's examples is refused.

The rule is pure: each category's example phrases are embedded once (by whatever
:class:`PromptEmbedder` the gate was given; the real one is
:mod:`consentry.detectors.prompt_embedder`), a prompt costs one more embedding, and its score for
a category is the highest cosine similarity to any of that category's examples. The category whose
score clears its threshold by the widest margin is the one named in the refusal.

The keyword rule (:func:`consentry.policies.consent.denied_terms`) stays first: it is exact,
free, and catches what an embedding may blur; this rule adds paraphrases, misspellings and
other wordings of the same request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from consentry.policies import codes
from consentry.policies.consent import denied_terms, evaluate_prompt
from consentry.policies.decision import Verdict

if TYPE_CHECKING:
    from consentry.policies.policy import PromptPolicy

Vectors = npt.NDArray[np.float32]


# Words that say who is shown and in what medium, not what is asked: in a portrait gateway
# nearly every prompt has them, and left in, they make "him skiing" as close to "him having sex"
# as the request's own words do. Examples and prompts are compared without them; a prompt made
# of nothing else asks for nothing a category could deny.
_FRAMING_WORDS = frozenset(
    [
        *("a", "an", "the", "her", "him", "his", "hers", "she", "he", "they", "them", "their"),
        *("this", "that", "these", "those", "person", "subject", "of", "in", "on", "at", "with"),
        *("and", "to", "is", "are", "be", "being", "for", "by", "as", "it", "its", "me", "my"),
        *("i", "you", "your", "someone", "man", "woman", "guy", "photo", "photograph", "picture"),
        *("pic", "image", "portrait", "drawing", "painting", "illustration", "render", "style"),
    ]
)
_LEET = str.maketrans("0134578@$", "oieastbas")
_SPELLED_OUT = re.compile(r"\b(?![ai] )(?:\w[ .]){2,}\w\b")
"""Three or more single characters spaced or dotted out (``n u d e``, ``s.e.x``); a leading
``a`` or ``i`` is taken for the English word (``a n u d e`` is ``a nude``)."""


def _unleet(word: str) -> str:
    """``n4k3d`` -> ``naked``: digits read as letters in a word that starts with a letter (``4k``,
    ``35mm`` or ``1990s`` stay as they are)."""
    if word[:1].isalpha() and re.search(r"[0-9@$]", word):
        return word.translate(_LEET)
    return word


def _spelled_out_joined(text: str) -> str:
    return _SPELLED_OUT.sub(lambda m: re.sub(r"[ .]", "", m.group(0)), text.lower())


def _meaning_words(text: str) -> list[str]:
    words = [_unleet(w) for w in re.findall(r"[\w'@$]+", text)]
    return [w for w in words if w not in _FRAMING_WORDS]


def meaning_text(prompt: str) -> str:
    """What the semantic rule embeds: lower case, spelled-out and leetspeak words joined and read
    as letters, framing words (pronouns, articles, prepositions, the medium) dropped. Empty when
    nothing else is left."""
    return " ".join(_meaning_words(_spelled_out_joined(prompt)))


_CLAUSE_BREAK = re.compile(r"[,.;:!?()\[\]{}|/\n]+")
WINDOW_WORDS = 6
"""Words per window over a long clause (after framing words are dropped): a request hidden in a
long run-on description is not averaged away."""


def meaning_parts(prompt: str) -> list[str]:
    """The texts one prompt is embedded as (one batch): the whole prompt, each clause, and
    overlapping windows of :data:`WINDOW_WORDS` words over longer clauses. A sentence embedding
    is a mean over tokens, so one harmful clause padded with a harmless scene ("a misty lake at
    dawn, pine forest, golden light, ...") would otherwise score like the scene."""
    text = _spelled_out_joined(prompt)
    parts = [" ".join(_meaning_words(text))]
    for clause in _CLAUSE_BREAK.split(text):
        words = _meaning_words(clause)
        parts.append(" ".join(words))
        if len(words) > WINDOW_WORDS:
            step = WINDOW_WORDS // 2
            for start in range(0, len(words) - WINDOW_WORDS + step, step):
                parts.append(" ".join(words[start : start + WINDOW_WORDS]))
    return [p for p in dict.fromkeys(parts) if p]


class PromptEmbedder(Protocol):
    """Turns texts into sentence embeddings."""

    @property
    def name(self) -> str:
        """The model, for logs and the CLI."""
        ...

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One row per text, each of unit length (so a dot product is the cosine similarity)."""
        ...


@dataclass(frozen=True, slots=True)
class CategoryMatch:
    """How close a prompt came to one deny category."""

    category: str
    score: float
    """Highest cosine similarity between the prompt and one of the category's examples."""
    threshold: float
    example: str
    """The example the prompt came closest to (for the people who tune the policy)."""

    @property
    def denied(self) -> bool:
        return self.score >= self.threshold

    @property
    def margin(self) -> float:
        return self.score - self.threshold


class MeaningCheck(Protocol):
    """What the consent step asks of the semantic rule (a :class:`SemanticRule`, or a lazy holder
    that builds one on first use)."""

    def check(self, prompt: str) -> CategoryMatch | None:
        """The prompt's closest deny category (blocking: one embedding)."""
        ...


@dataclass(frozen=True, slots=True)
class _Category:
    name: str
    threshold: float
    examples: tuple[str, ...]
    vectors: Vectors


class SemanticRule:
    """The deny categories of a policy, their examples embedded once."""

    def __init__(self, embedder: PromptEmbedder, categories: Sequence[_Category]) -> None:
        self.embedder = embedder
        self._categories = tuple(categories)

    @classmethod
    def build(cls, policy: PromptPolicy, embedder: PromptEmbedder) -> SemanticRule:
        """Embed every category's examples (one batch)."""
        # An example of framing words alone would match every prompt: it is kept whole.
        texts = [meaning_text(e) or e for c in policy.categories for e in c.examples]
        vectors = embedder.embed(texts) if texts else np.zeros((0, 0), np.float32)
        categories, start = [], 0
        for c in policy.categories:
            end = start + len(c.examples)
            threshold = c.threshold if c.threshold is not None else policy.semantic_threshold
            categories.append(_Category(c.name, threshold, tuple(c.examples), vectors[start:end]))
            start = end
        return cls(embedder, categories)

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(c.name for c in self._categories)

    def closest(self, vector: Vectors) -> CategoryMatch | None:
        """The category whose score is nearest its threshold (or furthest past it); None when
        the policy has no categories."""
        best: CategoryMatch | None = None
        for c in self._categories:
            sims = c.vectors @ vector
            i = int(np.argmax(sims))
            match = CategoryMatch(c.name, float(sims[i]), c.threshold, c.examples[i])
            if best is None or match.margin > best.margin:
                best = match
        return best

    def check(self, prompt: str) -> CategoryMatch | None:
        """Embed ``prompt`` and its clauses (one batch, blocking) and find the closest category
        of any of them; None when the prompt has nothing but framing words (or the policy no
        categories)."""
        parts = meaning_parts(prompt)
        if not parts:
            return None
        best: CategoryMatch | None = None
        for vector in self.embedder.embed(parts):
            match = self.closest(vector)
            if match is not None and (best is None or match.margin > best.margin):
                best = match
        return best


def semantic_verdict(match: CategoryMatch | None) -> Verdict:
    """Refuse a prompt that falls in a deny category, naming it; the similarity is its score."""
    if match is None:
        return Verdict.allow("no deny category applies to the prompt")
    if not match.denied:
        return Verdict.allow(
            f"the prompt is in no denied category (closest: {match.category}, "
            f"similarity {match.score:.2f} < {match.threshold:.2f})",
            similarity=match.score,
        )
    return Verdict.refuse(
        codes.CONSENT_PROMPT_DENIED,
        f"the prompt falls in the denied category {match.category!r} "
        f"(similarity {match.score:.2f} >= {match.threshold:.2f})",
        similarity=match.score,
        threshold=match.threshold,
    )


@dataclass(frozen=True, slots=True)
class PromptScreen:
    """The prompt rules' answer for one prompt, as ``consentry policy check --prompt`` prints it."""

    verdict: Verdict
    rule: str | None
    """Which rule refused: ``deny_terms`` or ``semantic``; None when the prompt passed."""
    terms: tuple[str, ...] = ()
    match: CategoryMatch | None = None

    def as_dict(self) -> dict[str, Any]:
        m = self.match
        return {
            "refused": not self.verdict.allowed,
            "code": self.verdict.code,
            "category": m.category if m is not None and self.rule == "semantic" else None,
            "score": round(m.score, 4) if m is not None else None,
            "rule": self.rule,
            "terms": list(self.terms),
            "closest": m.category if m is not None else None,
            "threshold": m.threshold if m is not None else None,
            "reason": self.verdict.reason,
        }


def screen_prompt(prompt: str, deny_terms: Iterable[str], rule: SemanticRule | None) -> PromptScreen:
    """Both prompt rules, keyword first: a prompt with a denied term is refused without an
    embedding; otherwise, with a semantic rule, by its closest category."""
    terms = tuple(deny_terms)
    keyword = evaluate_prompt(prompt, terms)
    if not keyword.allowed:
        return PromptScreen(keyword, "deny_terms", tuple(denied_terms(prompt, terms)))
    if rule is None:
        return PromptScreen(keyword, None)
    match = rule.check(prompt)
    verdict = semantic_verdict(match)
    return PromptScreen(verdict, None if verdict.allowed else "semantic", (), match)
