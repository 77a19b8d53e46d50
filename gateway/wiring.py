"""Builds a Gate from settings: stores, models, the stages of the flow, provenance.

This is the one place that knows which implementation each Protocol gets; the Gate and the flow
receive finished components and never reach back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from PIL import Image

from consentry.detectors.liveness import (
    LivenessCheck,
    PoseCheck,
    PoseThresholds,
    draw_poses,
    load_liveness_check,
)
from consentry.gateway import __version__
from consentry.gateway.admission import Admission
from consentry.gateway.flow import GenerateFlow, Stages
from consentry.gateway.gate import Gate, GateParts, decode_uploads
from consentry.gateway.index_cache import IndexCache
from consentry.gateway.metrics import GateMetrics
from consentry.gateway.models import LazyAnalyzer, LazyGenerator, LazyPromptRule, Loadable
from consentry.gateway.personalization import AdapterTraining
from consentry.gateway.ratelimit import RateLimiter, RedisTokenBuckets, TokenBuckets
from consentry.gateway.release import ReleaseStage
from consentry.gateway.self_enrollment import DrawPoses, SelfEnrollment
from consentry.gateway.stages import (
    ConsentStage,
    ContentStage,
    GenerateStage,
    OutputFacesStage,
    ReferenceFacesStage,
    SignStage,
    WatermarkStage,
)
from consentry.gateway.storage.adapters import Adapters
from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.challenges import Challenges, Clock, utc_now
from consentry.gateway.storage.db import Database
from consentry.gateway.storage.principals import Principals
from consentry.gateway.storage.records import Records
from consentry.gateway.storage.subjects import Subjects
from consentry.gateway.storage.vault import TemplateVault, load_master_key
from consentry.generation.base import Generator, capabilities_of
from consentry.generation.ip_adapter_condition import IPAdapterCondition
from consentry.policies import codes
from consentry.policies.config import EmbedderKind, Settings, UnknownFaces
from consentry.policies.consent import Purpose
from consentry.policies.errors import ConfigurationError
from consentry.policies.policy import ContentClassifierKind, Policy, load_policy
from consentry.policies.prompt_rules import PromptEmbedder, SemanticRule
from consentry.provenance.audit_signing import AuditSigner
from consentry.provenance.keys import load_signing_material
from consentry.provenance.verification import ProvenanceVerifier, load_trust_anchors
from consentry.provenance.watermark import Watermarker
from consentry.provenance.watermark_keys import WatermarkKeyring

if TYPE_CHECKING:
    from consentry.detectors.analyzer import Analyzer, FaceAnalyzer
    from consentry.detectors.content import ContentClassifier
    from consentry.detectors.embedders import Embedder


def build_analyzer(settings: Settings) -> FaceAnalyzer:
    from consentry.detectors.analyzer import FaceAnalyzer
    from consentry.detectors.detection import FaceDetector
    from consentry.detectors.embedders import DlibResNetEmbedder
    from consentry.detectors.facenet_embedder import FacenetEmbedder

    detector = FaceDetector(device=settings.device, min_face_px=settings.min_face_px)
    embedder: Embedder
    if settings.embedder is EmbedderKind.facenet:
        if settings.facenet_weights is None:
            raise ConfigurationError(
                "embedder=facenet needs facenet_weights (a state-dict file)", code=codes.MODEL_WEIGHTS_MISSING
            )
        embedder = FacenetEmbedder(settings.facenet_weights, device=settings.device)
    else:
        embedder = DlibResNetEmbedder(device=settings.device)
    return FaceAnalyzer(detector, embedder)


def build_generator(settings: Settings) -> Generator:
    """The configured generator: the local diffusers pipeline, or an upstream HTTP service."""
    from consentry.generation.diffusers_backend import DiffusersTextToImage

    # Imported here so this function is the one place in wiring that knows about upstream mode.
    from consentry.generation.upstream import UpstreamA1111, UpstreamOpenAIImages
    from consentry.policies.config import GeneratorKind

    kind = settings.generator
    if kind is GeneratorKind.local:
        return DiffusersTextToImage(
            settings.model_dir, device=settings.device, ip_adapter=build_ip_adapter(settings)
        )
    url = settings.upstream_url
    if not url:
        raise ConfigurationError(
            f"generator={kind.value} needs upstream_url (CONSENTRY_UPSTREAM_URL), the base URL of the "
            "upstream image service",
            code=codes.CONFIG_UPSTREAM_URL,
        )
    timeout_s, retries = settings.upstream_timeout_s, settings.upstream_retries
    untrained = settings.upstream_untrained
    if kind is GeneratorKind.openai:
        return UpstreamOpenAIImages(
            url,
            api_key=settings.upstream_api_key,
            model=settings.upstream_model,
            timeout_s=timeout_s,
            retries=retries,
            untrained=untrained,
        )
    return UpstreamA1111(url, timeout_s=timeout_s, retries=retries, untrained=untrained)


def build_ip_adapter(settings: Settings) -> IPAdapterCondition | None:
    """The IP-Adapter for ``mode=ip_adapter``, when the deployment gives its weights by path."""
    weights, encoder = settings.ip_adapter_weights, settings.ip_adapter_image_encoder
    if weights is None and encoder is None:
        return None
    if weights is None or encoder is None:
        raise ConfigurationError(
            "ip_adapter_weights and ip_adapter_image_encoder go together: set both or neither",
            code=codes.MODEL_WEIGHTS_MISSING,
        )
    return IPAdapterCondition(weights, encoder, scale=settings.ip_adapter_scale)


def build_content_classifier(policy: Policy) -> ContentClassifier | None:
    """The policy's output content classifier (unloaded: it loads at warm-up or on first use),
    or None for ``classifier = "none"``."""
    kind = policy.content.classifier
    if kind is ContentClassifierKind.none:
        return None
    from consentry.detectors.content import OpenNsfwClassifier

    return OpenNsfwClassifier()


def build_stages(
    settings: Settings,
    *,
    subjects: Subjects,
    audit: AuditLog,
    analyzer: Analyzer,
    index: IndexCache,
    generator: Generator,
    watermarker: Watermarker,
    adapters: Adapters,
    policy: Policy,
    classifier: ContentClassifier | None = None,
    prompt_rule: LazyPromptRule | None = None,
) -> Stages:
    """The implementation of each step of :class:`GenerateFlow`, from the settings."""
    s, keys_dir = settings, settings.keys_dir
    return Stages(
        consent=ConsentStage(subjects, policy, prompt_rule),
        references=ReferenceFacesStage(
            analyzer, index, s.match_threshold, allow_unknown=s.unknown_faces is UnknownFaces.allow
        ),
        generate=GenerateStage(generator, adapters),
        outputs=OutputFacesStage(
            analyzer,
            index,
            s.match_threshold,
            require_face=s.require_output_face,
            allow_unknown_unnamed=s.unknown_output_faces is UnknownFaces.allow,
            subject_threshold=s.output_match_threshold,
        ),
        content=ContentStage(classifier, policy),
        watermark=WatermarkStage(watermarker),
        sign=SignStage(lambda: load_signing_material(keys_dir), __version__, policy.version),
        release=ReleaseStage(audit, s.output_dir, keep_prompt=s.audit_prompts),
    )


def build_prompt_rule(
    settings: Settings, policy: Policy, embedder: PromptEmbedder | None = None
) -> LazyPromptRule | None:
    """The policy's deny categories by meaning, when it turns them on: the bundled embedding model
    (loaded once per process), or ``embedder`` (tests, embedding apps)."""
    if not policy.prompt.semantic:
        return None
    if embedder is not None:
        given = embedder
        return LazyPromptRule(lambda: SemanticRule.build(policy.prompt, given))

    def bundled() -> SemanticRule:
        from consentry.detectors.prompt_embedder import bundled_semantic_rule

        return bundled_semantic_rule(policy.prompt, settings.device)

    return LazyPromptRule(bundled)


def build_liveness_checks(policy: Policy) -> list[LivenessCheck]:
    """The checks of a self-enrollment answer: the pose challenge, plus the deployment's own
    model when the policy's ``enrollment.liveness_model`` names one."""
    rules = policy.enrollment
    checks: list[LivenessCheck] = [PoseCheck(PoseThresholds(rules.front_max_deg, rules.turn_min_deg))]
    if rules.liveness_model is not None:
        checks.append(load_liveness_check(rules.liveness_model, rules.liveness_model_weights))
    return checks


def build_self_enrollment(
    settings: Settings,
    policy: Policy,
    checks: list[LivenessCheck],
    *,
    db: Database,
    audit: AuditLog,
    subjects: Subjects,
    clock: Clock = utc_now,
    draw: DrawPoses = draw_poses,
) -> SelfEnrollment:
    """``clock`` and ``draw`` (the random pose sequence) are injectable for tests."""
    return SelfEnrollment(
        challenges=Challenges(db, audit, clock),
        subjects=subjects,
        audit=audit,
        policy=policy,
        checks=checks,
        match_threshold=settings.match_threshold,
        min_face_px=settings.min_enroll_face_px,
        draw=draw,
    )


def build_rate_limiter(settings: Settings) -> RateLimiter:
    """Shared buckets in Redis when configured (all workers and replicas), else per process."""
    per_minute, burst = settings.rate_limit_per_minute, settings.rate_limit_burst
    if settings.redis_url:
        return RedisTokenBuckets(settings.redis_url, per_minute, burst)
    return TokenBuckets(per_minute, burst)


def quiet_libraries() -> None:
    """diffusers and transformers draw progress bars on every load; a server log wants none."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


async def open_gate(
    settings: Settings,
    *,
    analyzer: Analyzer | None = None,
    generator: Generator | None = None,
    content_classifier: ContentClassifier | None = None,
    adjust_stages: Callable[[Stages], Stages] | None = None,
    prompt_embedder: PromptEmbedder | None = None,
) -> Gate:
    """Open the database (migrating it) and assemble the gate; models load on first use.

    ``analyzer``, ``generator``, ``content_classifier`` and ``prompt_embedder`` replace the
    configured models (tests, embedding apps); an injected generator is not closed with the gate:
    it belongs to whoever made it. An injected classifier runs whatever the policy's
    ``content.classifier`` says.
    ``adjust_stages`` may swap single steps (``dataclasses.replace(stages, outputs=...)``), e.g.
    to put a deliberately failing check into the flow.
    """
    # A bad policy file stops the gate before anything is opened or written.
    policy = load_policy(settings.policy_file)
    # So does a liveness model the policy names that cannot be imported or built.
    liveness_checks = build_liveness_checks(policy)
    db = Database(settings.database_url)
    await db.migrate()
    keys_dir = settings.keys_dir
    metrics = GateMetrics()
    audit = AuditLog(
        db,
        AuditSigner.load_or_create(keys_dir),
        settings.audit_checkpoint_every,
        observe=metrics.audit_append_seconds.observe,
        policy_version=policy.version,
    )
    vault = TemplateVault(load_master_key(keys_dir))
    adapters = Adapters(db, vault, audit, settings.adapters_dir)
    subjects = Subjects(db, vault, audit, adapters_dir=settings.adapters_dir)
    # Jobs of a process that died mid-training: failed, so they block nothing and leave nothing.
    await adapters.mark_interrupted(settings.adapter_stale_after_s)
    records = Records(db)
    lazy_analyzer = LazyAnalyzer(
        (lambda: analyzer) if analyzer is not None else lambda: build_analyzer(settings)
    )
    lazy_generator = LazyGenerator(
        (lambda: generator) if generator is not None else lambda: build_generator(settings),
        name=generator.name if generator is not None else str(settings.model_dir),
        owned=generator is None,
    )
    # The stages' face analysis, micro-batched across concurrent requests when configured.
    stage_analyzer: Analyzer = lazy_analyzer
    if settings.face_batch_window_ms > 0:
        from consentry.detectors.microbatch import MicroBatchingAnalyzer

        stage_analyzer = MicroBatchingAnalyzer(lazy_analyzer, settings.face_batch_window_ms / 1000.0)
    prompt_rule = build_prompt_rule(settings, policy, prompt_embedder)
    # Marks are embedded and verified on the GPU when the device is CUDA (torch is imported at
    # the first request, not here: commands that never mark an image start without it).
    watermarker = Watermarker(WatermarkKeyring.load_or_create(keys_dir), device=settings.device)
    index = IndexCache(subjects, lazy_analyzer)
    classifier = content_classifier if content_classifier is not None else build_content_classifier(policy)
    stages = build_stages(
        settings,
        subjects=subjects,
        audit=audit,
        analyzer=stage_analyzer,
        index=index,
        generator=lazy_generator,
        watermarker=watermarker,
        adapters=adapters,
        policy=policy,
        classifier=classifier,
        prompt_rule=prompt_rule,
    )
    if adjust_stages is not None:
        stages = adjust_stages(stages)
    admission = Admission(settings.generation_concurrency, settings.queue_depth, settings.queue_wait_s)
    metrics.queue_depth.set_function(lambda: admission.queued)
    anchors = load_trust_anchors(settings.trust_anchors, keys_dir, settings.trust_dev_ca)

    async def decode(files: Sequence[bytes]) -> list[Image.Image]:
        return await decode_uploads(settings, files)

    training = AdapterTraining(
        settings=settings,
        subjects=subjects,
        adapters=adapters,
        audit=audit,
        analyzer=lazy_analyzer,
        index=index,
        trainer=lambda: lazy_generator if capabilities_of(lazy_generator).adapters else None,
        decode=decode,
        needs_liveness=bool(policy.liveness_required([Purpose.adapter_training])),
    )
    models: tuple[Loadable, ...] = (lazy_analyzer, lazy_generator)
    if prompt_rule is not None:  # loaded at warm-up too, so no request pays for it
        models = (*models, prompt_rule)
    if classifier is not None:  # a configured classifier that cannot load stops the gateway
        models = (*models, classifier)
    return Gate(
        GateParts(
            settings=settings,
            db=db,
            audit=audit,
            principals=Principals(db, audit),
            subjects=subjects,
            records=records,
            analyzer=lazy_analyzer,
            generator=lazy_generator,
            index=index,
            flow=GenerateFlow(stages, settings.stage_timeout_s),
            provenance=ProvenanceVerifier(watermarker, records, anchors),
            rate_limits=build_rate_limiter(settings),
            admission=admission,
            metrics=metrics,
            adapters=adapters,
            training=training,
            self_enrollment=build_self_enrollment(
                settings, policy, liveness_checks, db=db, audit=audit, subjects=subjects
            ),
            models=models,
        )
    )
