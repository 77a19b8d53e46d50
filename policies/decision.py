"""Typed results of the gate's stages.

A stage returns a :class:`Verdict`; the runner collects them into a :class:`Decision`. Both are
frozen so that what was audited is exactly what was decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consentry.policies import codes


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one stage decided about one request."""

    allowed: bool
    code: str = codes.OK
    reason: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    elapsed_ms: float = 0.0
    fault: bool = False
    """True when the stage could not decide (it raised or timed out): the gate refused anyway."""

    @classmethod
    def allow(cls, reason: str = "", **scores: float) -> Verdict:
        return cls(allowed=True, code=codes.OK, reason=reason, scores=dict(scores))

    @classmethod
    def refuse(cls, code: str, reason: str, **scores: float) -> Verdict:
        return cls(allowed=False, code=code, reason=reason, scores=dict(scores))

    @classmethod
    def failed(cls, code: str, reason: str) -> Verdict:
        return cls(allowed=False, code=code, reason=reason, fault=True)

    def timed(self, elapsed_ms: float) -> Verdict:
        return Verdict(self.allowed, self.code, self.reason, dict(self.scores), elapsed_ms, self.fault)

    def as_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "code": self.code,
            "reason": self.reason,
            "scores": {k: round(float(v), 6) for k, v in self.scores.items()},
            "elapsed_ms": round(self.elapsed_ms, 3),
            "fault": self.fault,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdicts of every stage that ran, keyed by configured stage name, in order."""

    verdicts: dict[str, Verdict]

    @property
    def allowed(self) -> bool:
        return all(v.allowed for v in self.verdicts.values())

    @property
    def refusal(self) -> tuple[str, Verdict] | None:
        """The first refusing stage and its verdict, or None when every stage allowed."""
        for name, verdict in self.verdicts.items():
            if not verdict.allowed:
                return name, verdict
        return None

    @property
    def code(self) -> str:
        refusal = self.refusal
        return codes.RELEASED if refusal is None else refusal[1].code

    def as_dict(self) -> dict[str, Any]:
        return {name: v.as_dict() for name, v in self.verdicts.items()}
