"""Training a subject's LoRA adapter under consent, as a background job.

An adapter of identity X is trained only for a principal that X granted ``adapter_training``,
from photos that each pass the reference face rules for X (or from X's enrollment photos, when
the grant says so). The job runs in a worker thread; its progress is written to the adapter's row
(so ``GET /v1/adapters/{id}`` and any process see it) and pushed to in-process listeners (the
CLI's progress bar). The weights are stored only encrypted, by :class:`Adapters`, and only when
training finished and the grant is still live: a failed or interrupted job leaves no adapter.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from PIL import Image

from consentry.detectors.verification import judge_references
from consentry.gateway.requests import AdapterTrainingRequest, GenerationRequest
from consentry.gateway.storage.adapters import Adapters, AdapterView
from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.principals import PrincipalView
from consentry.gateway.storage.subjects import IdentityView, Subjects
from consentry.generation.base import (
    GenerationMode,
    Generator,
    GeneratorCapabilities,
    capabilities_of,
)
from consentry.policies import codes
from consentry.policies.config import Settings
from consentry.policies.consent import ConsentOutcome, GrantTerms, Purpose, evaluate_consent
from consentry.policies.decision import Verdict
from consentry.policies.errors import (
    BadInputError,
    ConfigurationError,
    ConflictError,
    ConsentryError,
    NotFoundError,
    RefusedError,
)

if TYPE_CHECKING:
    from consentry.detectors.analyzer import Analyzer
    from consentry.gateway.index_cache import IndexCache
    from consentry.generation.lora_training import LoraTrainingConfig, TrainedAdapter

log = logging.getLogger("consentry.adapters")

Progress = Callable[[int, int, float], None]
"""``(steps_done, steps_total, loss)``."""


class AdapterTrainer(Protocol):
    """What trains adapters: the local diffusers generator (or a test fake)."""

    def train_adapter(
        self,
        photos: Sequence[Image.Image],
        config: LoraTrainingConfig,
        *,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainedAdapter: ...


@dataclass
class _Running:
    task: asyncio.Task[AdapterView | None] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    listeners: list[Progress] = field(default_factory=list)


class AdapterTraining:
    """Starts, tracks and stops training jobs of this process."""

    def __init__(
        self,
        *,
        settings: Settings,
        subjects: Subjects,
        adapters: Adapters,
        audit: AuditLog,
        analyzer: Analyzer,
        index: IndexCache,
        trainer: Callable[[], AdapterTrainer | None],
        decode: Callable[[Sequence[bytes]], Awaitable[list[Image.Image]]],
        needs_liveness: bool = False,
    ) -> None:
        self.settings, self.subjects, self.adapters, self.audit = settings, subjects, adapters, audit
        self.needs_liveness = needs_liveness
        """The policy reserves ``adapter_training`` for subjects who enrolled themselves with a
        liveness proof: only grants recorded for such a subject let a training start."""
        self.analyzer, self.index = analyzer, index
        self._trainer, self._decode = trainer, decode
        self._running: dict[str, _Running] = {}

    def config_for(self, req: AdapterTrainingRequest) -> LoraTrainingConfig:
        from consentry.generation.lora_training import LoraTrainingConfig

        s = self.settings
        return LoraTrainingConfig(
            steps=s.adapter_steps if req.steps is None else req.steps,
            rank=s.adapter_rank if req.rank is None else req.rank,
            prior_images=s.adapter_prior_images if req.prior_images is None else req.prior_images,
        )

    async def start(self, actor: PrincipalView, req: AdapterTrainingRequest) -> AdapterView:
        """Check everything, record the job, and start it; returns at once (status ``training``)."""
        config = self.config_for(req)  # bad parameters: 400 before anything is stored
        subject = await self.subjects.get(req.identity_id)
        if subject.status == "erased":
            raise ConflictError(f"identity {subject.id} is erased", code=codes.IDENTITY_ERASED)
        trainer = self._trainer()
        if trainer is None:
            raise BadInputError(
                "this deployment's generator cannot train adapters (upstream generators do not)",
                code=codes.ADAPTER_UNSUPPORTED,
            )
        grant = await self._training_grant(actor, subject, enrollment_photos=not req.photos)
        if req.photos:
            images = await self._decode(req.photos)
            await self._check_photos(actor, subject, images)
            source = "request"
        elif grant.use_enrollment_photos:
            kept = await self.subjects.enrollment_photos(subject.id)
            if not kept:
                raise BadInputError(
                    f"identity {subject.id} was enrolled without keeping photos; send training photos",
                    code=codes.ADAPTER_PHOTOS_REQUIRED,
                )
            images = await self._decode(kept)
            source = "enrollment"
        else:
            raise BadInputError(
                f"grant {grant.id} does not allow training on enrollment photos; send training photos",
                code=codes.ADAPTER_PHOTOS_REQUIRED,
            )
        view = await self.adapters.start(
            identity_id=subject.id,
            grant_id=grant.id,
            principal_id=actor.id,
            steps=config.steps,
            rank=config.rank,
            prior_images=config.prior_images,
            photos_source=source,
            photos=len(images),
            actor=actor.id,
            stale_after_s=self.settings.adapter_stale_after_s,
        )
        running = _Running()
        self._running[view.id] = running
        running.task = asyncio.create_task(self._train(view, trainer, images, config, running))
        return view

    async def _training_grant(
        self, actor: PrincipalView, subject: IdentityView, *, enrollment_photos: bool
    ) -> GrantTerms:
        grants = await self.subjects.grants_for(subject.id, actor.id)

        def decide(candidates: Sequence[GrantTerms]) -> ConsentOutcome:
            return evaluate_consent(
                subject_status=subject.status,
                grants=candidates,
                principal_id=actor.id,
                purpose=Purpose.adapter_training.value,
                prompt="",
                deployment_deny_terms=(),
                now=datetime.now(UTC),
                needs_liveness=self.needs_liveness,
            )

        # Without photos in the request, a live grant that allows the enrollment photos wins.
        with_photos = [g for g in grants if g.use_enrollment_photos] if enrollment_photos else []
        outcome = decide(with_photos) if with_photos else decide(grants)
        if outcome.grant is None and with_photos:
            outcome = decide(grants)
        if outcome.grant is None:
            await self._refuse(actor, subject, outcome.verdict)
        assert outcome.grant is not None  # _refuse raised
        return outcome.grant

    async def _check_photos(
        self, actor: PrincipalView, subject: IdentityView, images: Sequence[Image.Image]
    ) -> None:
        """Every training photo must show the subject and only the subject, whatever the
        deployment allows for references: an adapter learns every face it is shown."""
        analyzed = await asyncio.to_thread(self.analyzer.analyze, list(images))
        current = await self.index.get()
        scores = await asyncio.to_thread(lambda: [current.scores(a.embeddings) for a in analyzed])
        verdict = judge_references(
            scores, subject=subject.id, threshold=self.settings.match_threshold, allow_unknown=False
        )
        if not verdict.allowed:
            await self._refuse(actor, subject, verdict)

    async def _refuse(self, actor: PrincipalView, subject: IdentityView, verdict: Verdict) -> None:
        body = {
            "identity_id": subject.id,
            "principal_id": actor.id,
            "decision": verdict.code,
            "reason": verdict.reason,
        }
        event = await self.audit.append("adapter.training_refused", body)
        raise RefusedError(f"adapter training: {verdict.reason}", code=verdict.code, audit_seq=event.seq)

    async def _train(
        self,
        view: AdapterView,
        trainer: AdapterTrainer,
        images: Sequence[Image.Image],
        config: LoraTrainingConfig,
        running: _Running,
    ) -> AdapterView | None:
        """The job; its final view, or None when its row was deleted meanwhile."""
        loop = asyncio.get_running_loop()
        last_write = 0.0

        def progress(step: int, total: int, loss: float) -> None:
            # Called in the training thread: the row is updated at most once a second (it is the
            # job's heartbeat), listeners on every step.
            nonlocal last_write
            for listener in list(running.listeners):
                loop.call_soon_threadsafe(listener, step, total, loss)
            now = time.monotonic()
            if now - last_write >= 1.0 or step == total:
                last_write = now
                write = asyncio.run_coroutine_threadsafe(self.adapters.progress(view.id, step, loss), loop)
                if not write.result(30):
                    # The row was deleted or failed meanwhile (grant revoked, identity erased): stop.
                    running.stop.set()

        try:
            trained = await asyncio.to_thread(
                trainer.train_adapter, images, config, progress=progress, should_stop=running.stop.is_set
            )
            details = {
                "instance_loss": trained.instance_loss,
                "prior_loss": trained.prior_loss,
                "elapsed_ms": round(trained.elapsed_ms, 1),
            }
            return await self.adapters.finish(view.id, trained.weights, details)
        except ConsentryError as exc:
            log.warning("adapter %s: training failed: %s", view.id, exc)
            await self._fail(view.id, exc.code, exc.detail)
        except Exception as exc:  # a bug or a torch error the trainer did not wrap
            log.error("adapter %s: training failed", view.id, exc_info=exc)
            await self._fail(view.id, codes.ADAPTER_TRAINING_FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            self._running.pop(view.id, None)
        try:
            return await self.adapters.get(view.id)
        except NotFoundError:
            return None

    async def _fail(self, adapter_id: str, code: str, reason: str) -> None:
        try:
            current = await self.adapters.get(adapter_id)
            if current.status == "training":  # finish() may already have failed it (grant revoked)
                await self.adapters.fail(adapter_id, code, reason)
        except NotFoundError:
            pass  # revocation or erasure deleted the row: there is nothing left to mark

    async def wait(self, adapter_id: str, on_progress: Progress | None = None) -> AdapterView:
        """Wait for a job of this process to end (the CLI's foreground training)."""
        running = self._running.get(adapter_id)
        if running is None or running.task is None:
            return await self.adapters.get(adapter_id)
        if on_progress is not None:
            running.listeners.append(on_progress)
        done = await asyncio.shield(running.task)
        if done is None:
            raise ConflictError(
                f"adapter {adapter_id} was deleted while training (grant revoked or identity erased)",
                code=codes.ADAPTER_TRAINING_FAILED,
            )
        return done

    async def close(self) -> None:
        """Stop every job of this process; each ends as ``adapter.interrupted`` with no adapter."""
        for running in list(self._running.values()):
            running.stop.set()
        tasks = [r.task for r in self._running.values() if r.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def check_personalization(
    req: GenerationRequest, subject: IdentityView | None, generator: Generator, adapters: Adapters
) -> str | None:
    """Check what the request asks of the generator, before anything is audited; with
    ``adapter``, the subject's newest ready adapter (consent to use it is the flow's job)."""
    if req.purpose is Purpose.adapter_training:
        raise BadInputError(
            "adapter_training is a purpose for training adapters, not for generating",
            code=codes.INPUT_PURPOSE_INVALID,
        )
    if req.mode is GenerationMode.txt2img and not req.adapter:
        return None
    try:
        capabilities = capabilities_of(generator)
    except ConfigurationError:
        # The generator cannot even be built: the flow's generate step refuses, audited.
        capabilities = GeneratorCapabilities(modes=frozenset(GenerationMode), adapters=True)
    if req.mode not in capabilities.modes:
        raise BadInputError(
            f"this deployment's generator does not offer mode {req.mode.value}",
            code=codes.GENERATION_MODE_UNAVAILABLE,
        )
    if not req.adapter:
        return None
    if subject is None:
        raise BadInputError("adapter needs a subject_id: whose adapter?", code=codes.ADAPTER_MISSING)
    if not capabilities.adapters:
        raise BadInputError(
            "this deployment's generator cannot load adapters", code=codes.ADAPTER_UNSUPPORTED
        )
    if subject.status == "erased":
        raise ConflictError(f"identity {subject.id} is erased", code=codes.IDENTITY_ERASED)
    ready = await adapters.latest_ready(subject.id)
    if ready is None:
        raise ConflictError(f"identity {subject.id} has no trained adapter", code=codes.ADAPTER_MISSING)
    return ready.id
