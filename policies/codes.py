"""The registry of stable codes. Clients switch on these: never rename one.

Every refusal and error the gate answers with carries one of these codes; a test checks that the
source uses no code that is not registered here, and that every code here is used.
"""

from __future__ import annotations

# -- refusals: a rule said no (403), audited --------------------------------------------------
CONSENT_MISSING = "consent.missing"
CONSENT_SUBJECT_INACTIVE = "consent.subject_inactive"
CONSENT_PURPOSE = "consent.purpose_not_granted"
CONSENT_PROMPT_DENIED = "consent.prompt_denied"
CONSENT_REVOKED = "consent.revoked"
CONSENT_EXPIRED = "consent.expired"
CONSENT_EXHAUSTED = "consent.exhausted"
FACE_NONE = "face.none"
FACE_UNKNOWN = "face.unknown"
FACE_PROTECTED = "face.protected_identity"
OUTPUT_MISMATCH = "output.identity_mismatch"
OUTPUT_PROTECTED = "output.protected_identity"
OUTPUT_UNKNOWN_FACE = "output.unknown_face"

# -- output content classifier (issue 13): explicit outputs --------------------------------------
OUTPUT_EXPLICIT_WITH_LIKENESS = "output.explicit_with_likeness"
"""An explicit output that shows an enrolled person's face: refused under every policy."""
OUTPUT_EXPLICIT = "output.explicit"
"""An explicit output without an enrolled likeness, where the policy (deployment or purpose)
refuses explicit content."""

# -- faults: a stage could not decide (503), audited; the gate refused anyway ------------------
STAGE_ERROR = "stage.error"
STAGE_TIMEOUT = "stage.timeout"
WATERMARK_FAILED = "watermark.not_decodable"

RELEASED = "released"
"""The decision code of a generation every stage allowed."""

OK = "ok"
"""The verdict code of a stage that allowed the request."""

# -- generic error classes: defaults of the error tree ------------------------------------------
INTERNAL_ERROR = "internal.error"
NOT_FOUND = "not_found"
CONFLICT = "conflict"
REFUSED = "refused"
RATE_LIMITED = "rate.limited"
RATE_UNAVAILABLE = "rate.unavailable"
GATE_BUSY = "gate.busy"
CONFIG_REDIS_URL = "config.redis_url"

# -- http: Litestar's own errors (routing, methods, anything unmapped) --------------------------
HTTP_ERROR = "http.error"
ROUTE_NOT_FOUND = "route.not_found"
ROUTE_METHOD_NOT_ALLOWED = "route.method_not_allowed"

# -- input: the request or a CLI argument cannot be used (400) -----------------------------------
INPUT_INVALID = "input.invalid"
INPUT_PURPOSE_REQUIRED = "input.purpose_required"
INPUT_PURPOSE_INVALID = "input.purpose_invalid"
INPUT_RESPONSE_FORMAT_UNSUPPORTED = "input.response_format_unsupported"
INPUT_UNKNOWN_MODEL = "input.unknown_model"
INPUT_MALFORMED_JSON = "input.malformed_json"
INPUT_TOO_LARGE = "input.too_large"
INPUT_UNSUPPORTED_MEDIA_TYPE = "input.unsupported_media_type"
INPUT_BASE64_INVALID = "input.base64_invalid"
INPUT_TOO_MANY_REFERENCES = "input.too_many_references"
INPUT_TIME_INVALID = "input.time_invalid"
INPUT_FILE_UNREADABLE = "input.file_unreadable"
INPUT_FILE_UNWRITABLE = "input.file_unwritable"
INPUT_OUTPUT_FORMAT = "input.output_format"
INPUT_SHEETS_DIR = "input.sheets_dir"

# -- image: an upload is not an acceptable image -------------------------------------------------
IMAGE_INVALID = "image.invalid"
IMAGE_TOO_LARGE = "image.too_large"
IMAGE_EMPTY = "image.empty"
IMAGE_MULTI_FRAME = "image.multi_frame"

# -- face: the embedder could not use a face (faults) ------------------------------------------
FACE_CHIP_SHAPE = "face.chip_shape"
FACE_EMBEDDING_FAILED = "face.embedding_failed"

# -- auth: API keys and roles (401/403) ----------------------------------------------------------
AUTH_MISSING_KEY = "auth.missing_key"
AUTH_INVALID_KEY = "auth.invalid_key"
AUTH_FORBIDDEN = "auth.forbidden"

# -- principal and key: API principals and their keys --------------------------------------------
PRINCIPAL_NOT_FOUND = "principal.not_found"
PRINCIPAL_EXISTS = "principal.exists"
PRINCIPAL_NAME_INVALID = "principal.name_invalid"
PRINCIPAL_ROLE_INVALID = "principal.role_invalid"
KEY_NOT_FOUND = "key.not_found"

# -- identity: enrolled subjects -----------------------------------------------------------------
IDENTITY_NOT_FOUND = "identity.not_found"
IDENTITY_ERASED = "identity.erased"
IDENTITY_INACTIVE = "identity.inactive"
IDENTITY_LABEL_INVALID = "identity.label_invalid"

# -- grant: consent grants -----------------------------------------------------------------------
GRANT_NOT_FOUND = "grant.not_found"
GRANT_PURPOSE_INVALID = "grant.purpose_invalid"
GRANT_MAX_USES_INVALID = "grant.max_uses_invalid"

# -- enroll: enrollment photos -------------------------------------------------------------------
ENROLL_TOO_FEW_PHOTOS = "enroll.too_few_photos"
ENROLL_FACE_COUNT = "enroll.face_count"
ENROLL_INCONSISTENT = "enroll.inconsistent"
ENROLL_DUPLICATE_IDENTITY = "enroll.duplicate_identity"

# -- keys: signing, audit, watermark and master keys ---------------------------------------------
KEYS_MISSING = "keys.missing"
KEYS_INVALID = "keys.invalid"
KEYS_EXIST = "keys.exist"
KEYS_AUDIT_INVALID = "keys.audit_invalid"
KEYS_MASTER_INVALID = "keys.master_invalid"
KEYS_MASTER_MISMATCH = "keys.master_mismatch"
KEYS_WATERMARK_INVALID = "keys.watermark_invalid"
KEYS_WATERMARK_MISSING = "keys.watermark_missing"
KEYS_WATERMARK_UNREADABLE = "keys.watermark_unreadable"

# -- config: the deployment is misconfigured -----------------------------------------------------
CONFIG_INVALID = "config.invalid"
POLICY_INVALID = "policy.invalid"
CONFIG_DEVICE = "config.device"
CONFIG_DATABASE_URL = "config.database_url"
CONFIG_TRUST_ANCHORS = "config.trust_anchors"
CONFIG_WRITE_FAILED = "config.write_failed"
CONFIG_UPSTREAM_URL = "config.upstream_url"

# -- model: generator and detector weights -------------------------------------------------------
MODEL_MISSING = "model.missing"
MODEL_INVALID = "model.invalid"
MODEL_WEIGHTS_MISSING = "model.weights_missing"
MODEL_WEIGHTS_INVALID = "model.weights_invalid"
MODEL_DIR_NOT_EMPTY = "model.dir_not_empty"
MODEL_UNWRITABLE = "model.unwritable"

# -- generation: the generator refused the job or failed -----------------------------------------
GENERATION_INVALID_PARAMS = "generation.invalid_params"
GENERATION_CLOSED = "generation.closed"
GENERATION_FAILED = "generation.failed"
GENERATION_SAFETY_FILTERED = "generation.safety_filtered"
GENERATION_STRENGTH_INVALID = "generation.strength_invalid"
GENERATION_REFERENCE_REQUIRED = "generation.reference_required"
GENERATION_MODE_UNAVAILABLE = "generation.mode_unavailable"

# -- adapter: per-identity LoRA adapters and their training jobs -----------------------------------
ADAPTER_NOT_FOUND = "adapter.not_found"
ADAPTER_MISSING = "adapter.missing"
ADAPTER_TRAINING_BUSY = "adapter.training_busy"
ADAPTER_INVALID_PARAMS = "adapter.invalid_params"
ADAPTER_PHOTOS_REQUIRED = "adapter.photos_required"
ADAPTER_TRAINING_FAILED = "adapter.training_failed"
ADAPTER_INTERRUPTED = "adapter.interrupted"
ADAPTER_UNREADABLE = "adapter.unreadable"
ADAPTER_UNSUPPORTED = "adapter.unsupported"

# -- liveness: self-enrollment with a liveness proof (issue 13, line 2) ---------------------------
# Refusals of a challenge answer (403, audited as enrollment.liveness_refused).
LIVENESS_UNKNOWN_CHALLENGE = "liveness.unknown_challenge"
LIVENESS_EXPIRED = "liveness.expired"
LIVENESS_REPLAYED = "liveness.replayed"
LIVENESS_FACE_COUNT = "liveness.face_count"
LIVENESS_POSE_MISMATCH = "liveness.pose_mismatch"
LIVENESS_PERSON_CHANGED = "liveness.person_changed"
LIVENESS_REFERENCE_MISMATCH = "liveness.reference_mismatch"
LIVENESS_MODEL_REFUSED = "liveness.model_refused"
# Input (400) and configuration.
LIVENESS_FRAME_COUNT = "liveness.frame_count"
LIVENESS_MODEL_INVALID = "liveness.model_invalid"
# A grant for a purpose the policy reserves for subjects who self-enrolled with a liveness proof.
CONSENT_LIVENESS_REQUIRED = "consent.liveness_required"

# -- upstream: the HTTP image service the gate forwards approved jobs to (faults, 503) ----------
UPSTREAM_UNAVAILABLE = "upstream.unavailable"
UPSTREAM_TIMEOUT = "upstream.timeout"
UPSTREAM_ERROR = "upstream.error"
UPSTREAM_BAD_RESPONSE = "upstream.bad_response"

# -- watermark: embedding a mark -----------------------------------------------------------------
WATERMARK_PAYLOAD_INVALID = "watermark.payload_invalid"
WATERMARK_IMAGE_TOO_SMALL = "watermark.image_too_small"

# -- c2pa and manifest: content credentials ------------------------------------------------------
C2PA_UNSUPPORTED_FORMAT = "c2pa.unsupported_format"
C2PA_SIGN_FAILED = "c2pa.sign_failed"
C2PA_READ_FAILED = "c2pa.read_failed"
MANIFEST_INFO_INVALID = "manifest.info_invalid"

# -- audit and storage: the database -------------------------------------------------------------
AUDIT_UNAVAILABLE = "audit.unavailable"
STORAGE_UNAVAILABLE = "storage.unavailable"

# -- library: the CLI's photo-library scan -------------------------------------------------------
LIBRARY_NOT_A_FOLDER = "library.not_a_folder"
LIBRARY_EMPTY = "library.empty"
LIBRARY_NO_FACES = "library.no_faces"
LIBRARY_NO_SUCH_GROUP = "library.no_such_group"

# -- calibrate and report: threshold calibration -------------------------------------------------
CALIBRATE_DIR_MISSING = "calibrate.dir_missing"
CALIBRATE_TOO_FEW_PEOPLE = "calibrate.too_few_people"
CALIBRATE_NO_FACES = "calibrate.no_faces"
CALIBRATE_NO_GENUINE_PAIRS = "calibrate.no_genuine_pairs"
REPORT_WRITE_FAILED = "report.write_failed"

# -- console: the signed-in trust-and-safety console (issue 14) ----------------------------------
CONSOLE_SESSION_REQUIRED = "console.session_required"
CONSOLE_CSRF_INVALID = "console.csrf_invalid"
CONSOLE_CONFIRMATION_MISMATCH = "console.confirmation_mismatch"
CONSOLE_FILTER_INVALID = "console.filter_invalid"
CONSOLE_EVENT_NOT_FOUND = "console.event_not_found"
CONSOLE_UPLOAD_MISSING = "console.upload_missing"

# -- public: the key-less Soft Binding Resolution API and the /verify page (public verification) --
PUBLIC_ALG_UNSUPPORTED = "public.alg_unsupported"
PUBLIC_BINDING_VALUE_INVALID = "public.binding_value_invalid"
PUBLIC_MANIFEST_ID_INVALID = "public.manifest_id_invalid"
PUBLIC_MANIFEST_NOT_FOUND = "public.manifest_not_found"
PUBLIC_MANIFEST_MISSING = "public.manifest_missing"
PUBLIC_CONSENT_REVOKED = "public.consent_revoked"
PUBLIC_SUBJECT_ERASED = "public.subject_erased"
PUBLIC_BUSY = "public.busy"

# -- policy check: `consentry policy check --prompt` (prompt rules by meaning, policy file) ------
POLICY_PROMPT_INVALID = "policy.prompt_invalid"

ALL: frozenset[str] = frozenset(
    value for name, value in list(globals().items()) if name.isupper() and isinstance(value, str)
)
"""Every registered code."""
