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

# -- faults: a stage could not decide (503), audited; the gate refused anyway ------------------
STAGE_ERROR = "stage.error"
STAGE_TIMEOUT = "stage.timeout"
WATERMARK_FAILED = "watermark.not_decodable"

RELEASED = "released"
"""The decision code of a generation every stage allowed."""
