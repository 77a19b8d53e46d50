"""The second embedding backend is wired (weights by path, selectable in config), not evaluated.

The weights here are a randomly initialised InceptionResnetV1 that the test saves itself: this
checks loading, shapes and selection, and says nothing about accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from facenet_pytorch import InceptionResnetV1
from PIL import Image

from consentry.detectors.facenet_embedder import FacenetEmbedder
from consentry.gateway.wiring import build_analyzer
from consentry.policies.config import EmbedderKind, Settings
from consentry.policies.errors import ConfigurationError


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("facenet") / "inception_resnet_v1.pt"
    torch.save(InceptionResnetV1(pretrained=None, classify=False).eval().state_dict(), path)
    return path


def test_selected_in_config_and_embeds_real_faces(weights: Path, faces_dir: Path, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, embedder=EmbedderKind.facenet, facenet_weights=weights, device="cpu"
    )
    analyzer = build_analyzer(settings)
    assert isinstance(analyzer.embedder, FacenetEmbedder)
    image = Image.open(faces_dir / "lfw" / "Tony_Blair" / "Tony_Blair_0002.jpg").convert("RGB")
    [result] = analyzer.analyze([image])
    assert result.embeddings.shape == (len(result.faces), 512) and len(result.faces) >= 1
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, rtol=1e-4)


def test_missing_weights_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as exc:
        FacenetEmbedder(tmp_path / "nope.pt", device="cpu")
    assert exc.value.code == "model.weights_missing"
    settings = Settings(data_dir=tmp_path, embedder=EmbedderKind.facenet, device="cpu")
    with pytest.raises(ConfigurationError) as exc:
        build_analyzer(settings)
    assert exc.value.code == "model.weights_missing"


def test_wrong_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ConfigurationError) as exc:
        FacenetEmbedder(bad, device="cpu")
    assert exc.value.code == "model.weights_invalid"
