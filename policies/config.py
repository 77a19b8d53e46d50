"""The one configuration model: ``consentry.toml`` plus ``CONSENTRY_*`` environment variables.

Precedence (highest first): constructor arguments, environment, the TOML file, defaults. The
TOML file is ``$CONSENTRY_CONFIG`` if set, else ``./consentry.toml`` if present. Every path
that holds state defaults to a place under ``data_dir`` so one directory holds everything.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from consentry.policies.limits import MAX_GUIDANCE, MAX_REFERENCES, MAX_SIDE, MAX_STEPS, MIN_SIDE


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "consentry"


def config_file() -> Path:
    return Path(os.environ.get("CONSENTRY_CONFIG", "consentry.toml"))


class UnknownFaces(StrEnum):
    refuse = "refuse"
    allow = "allow"


class EmbedderKind(StrEnum):
    dlib = "dlib"
    facenet = "facenet"


class GeneratorKind(StrEnum):
    local = "local"
    openai = "openai"
    a1111 = "a1111"


class Settings(BaseSettings):
    """Deployment configuration. Field docs are the operator's reference."""

    model_config = SettingsConfigDict(env_prefix="CONSENTRY_", extra="forbid")

    data_dir: Path = Field(default_factory=default_data_dir)
    """Directory that holds all state: database, keys, certificates, models, outputs."""
    database_url: str = ""
    """SQLAlchemy async URL; empty means SQLite at ``data_dir/consentry.db``."""
    device: str = "auto"
    """Torch device for detection and embedding: ``auto`` (CUDA when present), ``cpu``, ``cuda``."""
    embedder: EmbedderKind = EmbedderKind.dlib
    """Face embedding backend."""
    facenet_weights: Path | None = None
    """State-dict file for the InceptionResnetV1 backend; required when ``embedder=facenet``."""
    match_threshold: float = 0.93
    """Cosine similarity at or above which two faces are the same person."""
    output_match_threshold: float = 0.93
    """Cosine similarity at or above which a face in an output counts as the subject (protection of
    other identities always uses ``match_threshold``). Generated likenesses score lower against a
    person's photos than photos of them do, but ``bench/output_threshold.py`` measured that on a
    degradation proxy any value below 0.93 lets other people's faces pass as the subject (0.92:
    6 of 2520 impostor pairs), so the default stays at 0.93; lower it only after measuring on
    real generated outputs."""
    min_face_px: int = 20
    """Faces smaller than this (shorter box side, pixels) are ignored by detection."""
    min_enroll_photos: int = 3
    """Fewest photos an enrollment needs."""
    min_enroll_face_px: int = 80
    """Smallest face (shorter box side, pixels) accepted in an enrollment photo."""
    unknown_faces: UnknownFaces = UnknownFaces.refuse
    """What to do with a reference face that matches no enrolled identity (requests naming a
    subject; without a subject only enrolled faces are refused)."""
    unknown_output_faces: UnknownFaces = UnknownFaces.allow
    """What to do with a face in an output of a request without a subject that matches no
    enrolled identity (``refuse`` makes the gate refuse generated faces of anyone at all)."""
    model_dir: Path = Path("models/tiny")
    """diffusers model directory (built by ``models tiny``); a relative path is under ``data_dir``."""
    output_dir: Path = Path("outputs")
    """Where released images are written; a relative path is under ``data_dir``."""
    keys_dir: Path = Path("keys")
    """Signing certificate, CA, watermark and template-encryption keys; relative: under ``data_dir``."""
    trust_dev_ca: bool = True
    """Treat the development CA under ``keys_dir`` as a C2PA trust anchor."""
    trust_anchors: Path | None = None
    """PEM file of further C2PA trust anchors (CA certificates) that make a manifest Trusted."""
    stage_timeout_s: float = 120.0
    """A stage that runs longer than this is refused as ``stage.timeout``."""
    max_image_bytes: int = 20 * 1024 * 1024
    """Largest accepted upload."""
    max_image_pixels: int = 40_000_000
    """Largest accepted decoded image (width x height); larger is refused before decoding."""
    max_references: int = Field(default=4, ge=0, le=MAX_REFERENCES)
    """Most reference images in one generation request."""
    policy_file: Path | None = None
    """The policy file (deny terms, categories by meaning, per-purpose rules, content and
    enrollment policy; see ``policies/default_policy.toml``); relative: under ``data_dir``.
    Unset: the shipped default policy."""
    generation_steps: int = Field(default=4, ge=1, le=MAX_STEPS)
    """Default denoising steps."""
    guidance_scale: float = Field(default=5.0, ge=0.0, le=MAX_GUIDANCE)
    """Classifier-free guidance scale given to local generators."""
    image_size: int = Field(default=256, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8)
    """Default output side in pixels (the invisible watermark needs at least 256)."""
    require_output_face: bool = False
    """Refuse outputs that show no face at all (off: a faceless image carries no likeness)."""
    rate_limit_per_minute: float = Field(default=60.0, gt=0)
    """Generation requests each principal may make per minute (per process, or shared by every
    process when ``redis_url`` is set)."""
    rate_limit_burst: int = Field(default=20, ge=1)
    """Requests a principal may make at once before the per-minute rate applies."""
    redis_url: str | None = None
    """Redis for the shared rate limiter (``redis://127.0.0.1:6379/0``); every worker and replica
    then spends from one bucket per principal. Unset: each process keeps its own buckets."""
    face_batch_window_ms: float = Field(default=0.0, ge=0.0, le=100.0)
    """Micro-batching of face analysis: a request reaching a face stage waits up to this long for
    others to share one detector/embedder batch (0: off; see ``bench/results/microbatch_load.md``
    for when it pays). Each request's own images are always analysed as one batch."""
    generation_concurrency: int = Field(default=1, ge=1, le=64)
    """Requests that run the generate flow at once in one process."""
    queue_depth: int = Field(default=8, ge=0, le=10_000)
    """Requests that may wait for a slot; beyond that a request is refused with ``gate.busy``."""
    queue_wait_s: float = Field(default=30.0, gt=0)
    """Longest wait for a slot before a queued request is refused with ``gate.busy``."""
    adapters_dir: Path = Path("adapters")
    """Encrypted LoRA adapter files (under each identity's data key); relative: under ``data_dir``.
    One folder per database: opening a gate removes adapter files its database does not own."""
    adapter_steps: int = Field(default=200, ge=1, le=2000)
    """Default training steps of a subject's LoRA adapter."""
    adapter_rank: int = Field(default=4, ge=1, le=64)
    """Default LoRA rank."""
    adapter_prior_images: int = Field(default=4, ge=0, le=50)
    """Default class images generated by the base model for prior preservation (0: none)."""
    adapter_stale_after_s: float = Field(default=120.0, gt=0)
    """A training job whose progress has not moved for this long is taken as interrupted (its
    process died): it no longer blocks a new training and is marked failed."""
    ip_adapter_weights: Path | None = None
    """IP-Adapter weights file (``ip-adapter.safetensors``) for ``mode=ip_adapter``; relative:
    under ``data_dir``. Unset: the mode is unavailable. Nothing is ever downloaded."""
    ip_adapter_image_encoder: Path | None = None
    """The IP-Adapter's CLIP image-encoder folder; required with ``ip_adapter_weights``."""
    ip_adapter_scale: float = Field(default=0.6, ge=0.0, le=1.0)
    """How strongly the reference faces condition an ``ip_adapter`` generation."""
    audit_checkpoint_every: int = Field(default=100, ge=1)
    """Keep a signed checkpoint of the audit chain every this many events."""
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per log line, each with the request id and the record id."""
    log_level: str = "INFO"
    """Log level of the gateway process (``DEBUG``, ``INFO``, ``WARNING``...)."""
    audit_prompts: bool = False
    """Store prompts in the audit log in clear; off stores only their SHA-256."""
    console_enabled: bool = True
    """Serve the trust-and-safety console at ``/console`` (sign-in with an API key of an admin,
    operator or auditor)."""
    console_idle_timeout_s: float = Field(default=900.0, gt=0)
    """A console session unused for this long ends; the next request asks to sign in again."""
    console_max_session_s: float = Field(default=12 * 3600.0, gt=0)
    """A console session ends this long after sign-in, however active."""
    console_secure_cookie: Literal["auto", "always", "never"] = "auto"
    """The console's session cookie carries ``Secure``: ``auto`` when the request came over
    https (behind a proxy: run uvicorn with ``--proxy-headers``), ``always``, or ``never``."""
    console_page_size: int = Field(default=50, ge=5, le=500)
    """Rows per page of the console's decision and identity tables."""
    generator: GeneratorKind = GeneratorKind.local
    """What makes the pictures: ``local`` (the diffusers pipeline in ``model_dir``), or an
    upstream HTTP service that already runs: ``openai`` (OpenAI-Images-compatible) or ``a1111``
    (AUTOMATIC1111 / Forge ``sdapi``). The gate forwards only jobs that passed every check."""
    upstream_url: str | None = None
    """Base URL of the upstream service; required unless ``generator=local``. For ``openai``
    it includes the API prefix (``http://host:8000/v1``), for ``a1111`` it is the server root
    (``http://host:7860``)."""
    upstream_api_key: str | None = Field(default=None, repr=False)
    """Bearer token sent to an ``openai`` upstream (``CONSENTRY_UPSTREAM_API_KEY``; never logged)."""
    upstream_model: str | None = None
    """Model name sent to an ``openai`` upstream (omitted when unset: the service's default)."""
    upstream_timeout_s: float = Field(default=60.0, gt=0)
    """Longest one upstream attempt may take, from sending the job to the last byte of the answer;
    a slower answer is refused as ``upstream.timeout`` and is not retried."""
    upstream_retries: int = Field(default=2, ge=0, le=5)
    """Retries (with a short backoff) after a connection error or a 502/503/504 answer; other
    answers and timeouts are never retried."""
    upstream_untrained: bool = False
    """Label the upstream's outputs as made by an untrained model (test services)."""

    public_verification: bool = True
    """Serve public verification without a key: the C2PA Soft Binding Resolution API
    (``/v1/services/supportedAlgorithms``, ``/v1/matches/byBinding``, ``/v1/matches/byContent``,
    ``/v1/manifests/{id}``), ``POST /v1/public/verify`` and the ``/verify`` page. A manifest
    whose subject has since revoked consent or been erased is answered with a tombstone that
    names no one. Off: those routes do not exist (404)."""
    public_rate_per_minute: float = Field(default=30.0, gt=0)
    """Public requests each client address may make per minute (IPv6: per /64); shared by every
    process when ``redis_url`` is set, like the generation limit."""
    public_rate_burst: int = Field(default=10, ge=1)
    """Public requests a client address may make at once before the per-minute rate applies."""
    public_client_header: str | None = None
    """Header that a reverse proxy you run sets to the client's address (``X-Forwarded-For``: the
    right-most entry is used, the one your proxy added). Unset: the peer address of the
    connection. Set it only behind such a proxy, or clients pick their own rate bucket."""
    public_decode_concurrency: int = Field(default=2, ge=1, le=64)
    """Uploaded files the public routes decode at once per process; more are refused at once
    with 503 ``public.busy`` + ``Retry-After`` (a watermark decode is CPU work)."""
    public_deployment_name: str = Field(default="Consentry", min_length=1, max_length=200)
    """How public answers (tombstones, the ``/verify`` page) name this deployment."""

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir / 'consentry.db'}"
        # Every state path hangs off data_dir unless the operator gave an absolute one.
        self.model_dir = self.data_dir / self.model_dir.expanduser()
        self.output_dir = self.data_dir / self.output_dir.expanduser()
        self.keys_dir = self.data_dir / self.keys_dir.expanduser()
        self.adapters_dir = self.data_dir / self.adapters_dir.expanduser()
        if self.policy_file is not None:
            self.policy_file = self.data_dir / self.policy_file.expanduser()
        if self.ip_adapter_weights is not None:
            self.ip_adapter_weights = self.data_dir / self.ip_adapter_weights.expanduser()
        if self.ip_adapter_image_encoder is not None:
            self.ip_adapter_image_encoder = self.data_dir / self.ip_adapter_image_encoder.expanduser()
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file())
        return init_settings, env_settings, toml
