"""The gate's stage runner.

Each stage is a small object with one async method, ``check(ctx) -> Verdict``. The runner executes
the configured stages in order, times each, keys verdicts by the configured stage name, stops at
the first refusal, and turns every exception into a refusal: the gate fails closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from consentry.gateway.storage.principals import PrincipalView
from consentry.gateway.storage.subjects import IdentityView
from consentry.policies import decision as codes
from consentry.policies.consent import GrantTerms
from consentry.policies.decision import Decision, Verdict
from consentry.policies.errors import ConsentryError

log = logging.getLogger("consentry.pipeline")


@dataclass
class GateContext:
    """Everything one request carries through the stages. Stages fill the later fields."""

    request_id: str
    principal: PrincipalView
    subject: IdentityView
    purpose: str
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    width: int
    height: int
    num_images: int
    references: Sequence[Image.Image]
    watermark: bytes  # the 8-byte payload that will name the generation record
    grant: GrantTerms | None = None
    outputs: list[Image.Image] = field(default_factory=list)
    model: str = ""
    untrained: bool = False
    marked: list[Image.Image] = field(default_factory=list)
    signed: list[bytes] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    output_scores: dict[str, float] = field(default_factory=dict)


class Stage(Protocol):
    async def check(self, ctx: GateContext) -> Verdict: ...


class Pipeline:
    def __init__(self, stages: Sequence[tuple[str, Stage]], timeout_s: float) -> None:
        names = [name for name, _ in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        self.stages = list(stages)
        self.timeout_s = timeout_s

    async def _run_one(self, name: str, stage: Stage, ctx: GateContext) -> Verdict:
        try:
            return await asyncio.wait_for(stage.check(ctx), self.timeout_s)
        except TimeoutError:
            # A worker thread cannot be killed; its result is simply never used.
            return Verdict.failed(codes.STAGE_TIMEOUT, f"stage {name} took longer than {self.timeout_s:g} s")
        except ConsentryError as exc:
            if exc.status < 500:
                return Verdict.refuse(exc.code, exc.detail)
            log.warning("stage %s failed: %s", name, exc)
            return Verdict.failed(exc.code, f"stage {name} failed: {exc.detail}")
        except Exception as exc:
            log.exception("stage %s failed", name)
            return Verdict.failed(codes.STAGE_ERROR, f"stage {name} failed: {type(exc).__name__}")

    async def run(self, ctx: GateContext) -> Decision:
        verdicts: dict[str, Verdict] = {}
        for name, stage in self.stages:
            start = time.perf_counter()
            verdict = await self._run_one(name, stage, ctx)
            verdicts[name] = verdict.timed((time.perf_counter() - start) * 1000.0)
            if not verdict.allowed:
                break
        return Decision(verdicts)
