"""The generate flow: one request through the gate's steps, top to bottom.

Pure checks return a :class:`Verdict`; transforms return their own frozen outputs
(:class:`Consent`, :class:`GenerationOutput`, :class:`MarkedImages`, :class:`SignedImages`,
:class:`ReleasedImages`). A :class:`Trace` runs each step under the stage time budget, times it,
keys its verdict by the stage's name in :data:`STAGES`, and turns any error into a refusal: the
gate fails closed. The first refusal ends the flow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from consentry.gateway.storage.principals import PrincipalView
from consentry.gateway.storage.subjects import IdentityView
from consentry.generation.base import GenerationJob, GenerationOutput
from consentry.policies import codes
from consentry.policies.consent import Consent
from consentry.policies.decision import Decision, Verdict
from consentry.policies.errors import ConsentryError
from consentry.provenance.outputs import MarkedImages, SignedImages

log = logging.getLogger("consentry.flow")

CONSENT = "consent"
VERIFY_REFS = "verify_refs"
GENERATE = "generate"
VERIFY_OUTPUT = "verify_output"
VERIFY_CONTENT = "verify_content"
WATERMARK = "watermark"
SIGN = "sign"
RELEASE = "release"
STAGES: tuple[str, ...] = (
    CONSENT, VERIFY_REFS, GENERATE, VERIFY_OUTPUT, VERIFY_CONTENT, WATERMARK, SIGN, RELEASE
)
"""Every step of the flow, in the order :meth:`GenerateFlow.run` takes them. Audit bodies,
responses and the demo's table are keyed by these names."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GateJob:
    """One admitted request: inputs decoded and checked, identifiers assigned."""

    request_id: str
    principal: PrincipalView
    subject: IdentityView | None
    """The named subject, or None for traffic that names nobody."""
    purpose: str | None
    generation: GenerationJob
    """What the generator is asked for; its parameters were checked when the job was built."""
    reference_files: tuple[bytes, ...] = ()
    """The uploaded reference files, as sent: the manifest binds them by hash (no pixels)."""
    adapter_id: str | None = None
    """The subject's LoRA adapter to load; its weights are decrypted only by the generate step,
    after consent and the reference check allowed the request."""
    payload: bytes
    """The 8-byte watermark payload that will name the generation record."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleasedImages:
    """The released files: committed with their audit event, then written under ``paths``."""

    record_id: str
    audit_seq: int
    files: tuple[bytes, ...]
    paths: tuple[Path, ...]

    def summary(self) -> str:
        return f"record {self.record_id} committed at audit seq {self.audit_seq}"


# -- the stages, as the flow sees them --------------------------------------------------------


class ConsentCheck(Protocol):
    async def check(self, job: GateJob) -> Consent:
        """The live grant that allows ``job`` (none without a subject); raises :class:`Refusal`
        when the request is not allowed."""
        ...


class ReferenceCheck(Protocol):
    async def check(self, job: GateJob) -> Verdict: ...


class ImageMaker(Protocol):
    async def run(self, job: GateJob) -> GenerationOutput: ...


class OutputCheck(Protocol):
    async def check(self, job: GateJob, generated: GenerationOutput) -> Verdict: ...


class ContentCheck(Protocol):
    async def check(self, job: GateJob, generated: GenerationOutput, faces: Verdict) -> Verdict:
        """Judge the outputs' content; ``faces`` is the output faces verdict (whose faces the
        outputs show)."""
        ...


class Marker(Protocol):
    async def run(self, generated: GenerationOutput, payload: bytes) -> MarkedImages: ...


class Signer(Protocol):
    async def run(
        self,
        job: GateJob,
        consent: Consent,
        generated: GenerationOutput,
        marked: MarkedImages,
        scores: Verdict,
    ) -> SignedImages: ...


class Releaser(Protocol):
    async def run(
        self,
        job: GateJob,
        consent: Consent,
        generated: GenerationOutput,
        signed: SignedImages,
        decided: Decision,
    ) -> ReleasedImages:
        """Commit the release (use counted, record and audit event in one transaction), then
        write the files. Raises :class:`Refusal` when the grant was used up meanwhile."""
        ...


@dataclass(frozen=True, slots=True)
class Stages:
    """The configured implementation of each step (built by :mod:`consentry.gateway.wiring`)."""

    consent: ConsentCheck
    references: ReferenceCheck
    generate: ImageMaker
    outputs: OutputCheck
    content: ContentCheck
    watermark: Marker
    sign: Signer
    release: Releaser


class Refusal(Exception):
    """Raised by a transform that refuses: the flow records ``verdict`` and stops."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict


class _Halted(Exception):
    """Internal: a step refused; :meth:`GenerateFlow.run` stops there."""


class Summarized(Protocol):
    def summary(self) -> str:
        """One line for the stage's allowing verdict (what was made)."""
        ...


V = TypeVar("V")
T = TypeVar("T", bound=Summarized)


def _failure(name: str, exc: Exception, timeout_s: float) -> Verdict:
    """The verdict of a step that raised: a rule's refusal, or a fault (it could not decide)."""
    if isinstance(exc, TimeoutError):
        # A worker thread cannot be killed; its result is simply never used.
        return Verdict.failed(codes.STAGE_TIMEOUT, f"stage {name} took longer than {timeout_s:g} s")
    if isinstance(exc, Refusal):
        return exc.verdict
    if isinstance(exc, ConsentryError):
        if exc.status < 500:
            return Verdict.refuse(exc.code, exc.detail)
        log.warning("stage %s failed: %s", name, exc)
        return Verdict.failed(exc.code, f"stage {name} failed: {exc.detail}")
    log.error("stage %s failed", name, exc_info=exc)
    return Verdict.failed(codes.STAGE_ERROR, f"stage {name} failed: {type(exc).__name__}")


class Trace:
    """Runs steps one at a time, each under ``timeout_s``, and keeps their timed verdicts."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.verdicts: dict[str, Verdict] = {}

    def _keep(self, name: str, verdict: Verdict, start: float) -> Verdict:
        timed = verdict.timed((time.perf_counter() - start) * 1000.0)
        self.verdicts[name] = timed
        if not timed.allowed:
            raise _Halted(name)
        return timed

    async def _run(self, name: str, work: Awaitable[V], start: float) -> V:
        try:
            return await asyncio.wait_for(work, self.timeout_s)
        except Exception as exc:
            self._keep(name, _failure(name, exc, self.timeout_s), start)
            raise  # pragma: no cover  (_keep raised _Halted for the refusing verdict)

    async def check(self, name: str, work: Awaitable[Verdict]) -> Verdict:
        """Run a pure check; its verdict is kept as is."""
        start = time.perf_counter()
        return self._keep(name, await self._run(name, work, start), start)

    async def make(self, name: str, work: Awaitable[T]) -> T:
        """Run a transform; its output's ``summary()`` becomes the stage's allowing verdict."""
        start = time.perf_counter()
        output = await self._run(name, work, start)
        self._keep(name, Verdict.allow(output.summary()), start)
        return output

    def decision(self) -> Decision:
        return Decision(dict(self.verdicts))


@dataclass(frozen=True, slots=True)
class FlowResult:
    """The decision, and what was released when every step allowed."""

    decision: Decision
    generated: GenerationOutput | None = None
    released: ReleasedImages | None = None


def _output_scores(*checks: Verdict) -> Verdict:
    """What the output checks measured, together: the manifest's ``verifier_scores``."""
    return Verdict.allow("output checks", **{k: v for check in checks for k, v in check.scores.items()})


class GenerateFlow:
    def __init__(self, stages: Stages, timeout_s: float) -> None:
        self.stages = stages
        self.timeout_s = timeout_s

    async def run(self, job: GateJob) -> FlowResult:
        s, trace = self.stages, Trace(self.timeout_s)
        try:
            consent = await trace.make(CONSENT, s.consent.check(job))
            await trace.check(VERIFY_REFS, s.references.check(job))
            generated = await trace.make(GENERATE, s.generate.run(job))
            output_faces = await trace.check(VERIFY_OUTPUT, s.outputs.check(job, generated))
            content = await trace.check(VERIFY_CONTENT, s.content.check(job, generated, output_faces))
            marked = await trace.make(WATERMARK, s.watermark.run(generated, job.payload))
            scores = _output_scores(output_faces, content)
            signed = await trace.make(SIGN, s.sign.run(job, consent, generated, marked, scores))
            released = await trace.make(
                RELEASE, s.release.run(job, consent, generated, signed, trace.decision())
            )
        except _Halted:
            return FlowResult(trace.decision())
        return FlowResult(trace.decision(), generated, released)
