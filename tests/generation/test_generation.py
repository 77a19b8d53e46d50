"""The generation package against a real (tiny, self-built) diffusers pipeline.

The model is built once per module into a temporary folder and loaded through the same code
path a deployment uses; nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from consentry.generation.base import GenerationJob, GenerationOutput, Generator
from consentry.generation.diffusers_backend import MARKER_FILE, DiffusersTextToImage
from consentry.generation.tiny import BUILT_BY, build_tiny_pipeline
from consentry.policies.errors import (
    BadInputError,
    ConfigurationError,
    ConflictError,
    StageError,
)
from consentry.policies.limits import MAX_IMAGES, MAX_SIDE, MAX_STEPS


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("gen") / "tiny", seed=0)


@pytest.fixture(scope="module")
def generator(tiny_dir: Path) -> DiffusersTextToImage:
    return DiffusersTextToImage(tiny_dir, device="cpu")


def _job(**overrides: Any) -> GenerationJob:
    params: dict[str, Any] = {
        "prompt": "a portrait photo",
        "seed": 7,
        "steps": 3,
        "width": 256,
        "height": 256,
        "guidance_scale": 5.0,
    }
    params.update(overrides)
    return GenerationJob(**params)


def _pixels(output: GenerationOutput, index: int = 0) -> np.ndarray:
    return np.asarray(output.images[index], dtype=np.int16)


# --- the tiny build -------------------------------------------------------------------------


def test_tiny_build_is_small_marked_untrained_and_has_no_safety_checker(tiny_dir: Path) -> None:
    marker = json.loads((tiny_dir / MARKER_FILE).read_text())
    assert marker["untrained"] is True
    assert marker["built_by"] == BUILT_BY
    assert "untrained" in marker["description"]
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None]
    size = sum(f.stat().st_size for f in tiny_dir.rglob("*") if f.is_file())
    assert size < 10 * 2**20, f"tiny model is {size} bytes"


def test_tiny_build_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ConflictError) as info:
        build_tiny_pipeline(tmp_path)
    assert info.value.code == "model.dir_not_empty"
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["precious.txt"]


def test_tiny_build_refuses_a_file_and_a_bad_size(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ConflictError):
        build_tiny_pipeline(target)
    with pytest.raises(BadInputError) as info:
        build_tiny_pipeline(tmp_path / "new", image_size=200)
    assert info.value.code == "generation.invalid_params"
    assert not (tmp_path / "new").exists()


def test_tiny_build_is_seeded_and_replaces_a_previous_build(tmp_path: Path) -> None:
    out = tmp_path / "model"
    weights = out / "unet" / "diffusion_pytorch_model.safetensors"
    build_tiny_pipeline(out, seed=3)
    first = weights.read_bytes()
    build_tiny_pipeline(out, seed=3)  # a previous tiny build may be overwritten
    assert weights.read_bytes() == first
    build_tiny_pipeline(out, seed=4)
    assert weights.read_bytes() != first
    # No staging or retired folders are left beside the model.
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# --- generating -----------------------------------------------------------------------------


def test_backend_satisfies_the_generator_protocol(generator: DiffusersTextToImage) -> None:
    assert isinstance(generator, Generator)
    assert generator.untrained is True
    assert generator.name == "tiny"


def test_generates_256_images_that_are_not_constant(generator: DiffusersTextToImage) -> None:
    output = generator.generate(_job(steps=4))
    assert len(output.images) == 1
    image = output.images[0]
    assert image.size == (256, 256)
    assert image.mode == "RGB"
    assert output.untrained is True
    assert output.model == "tiny"
    assert (output.seed, output.steps) == (7, 4)
    assert output.elapsed_ms > 0
    pixels = _pixels(output)
    assert pixels.std() > 10
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000


def test_same_job_gives_same_pixels_and_seed_or_prompt_change_them(
    generator: DiffusersTextToImage,
) -> None:
    first = _pixels(generator.generate(_job()))
    again = _pixels(generator.generate(_job()))
    assert np.array_equal(first, again)
    other_seed = _pixels(generator.generate(_job(seed=8)))
    assert np.abs(first - other_seed).mean() > 5
    # The text encoder is wired through cross-attention: the prompt changes the pixels too.
    other_prompt = _pixels(generator.generate(_job(prompt="a landscape")))
    assert not np.array_equal(first, other_prompt)


def test_several_images_per_job_differ(generator: DiffusersTextToImage) -> None:
    output = generator.generate(_job(num_images=2, steps=2, negative_prompt="blurry"))
    assert [im.size for im in output.images] == [(256, 256), (256, 256)]
    assert not np.array_equal(_pixels(output, 0), _pixels(output, 1))


def test_loads_and_generates_with_the_network_unreachable(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access attempted during an offline load")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with DiffusersTextToImage(tiny_dir, device="cpu") as offline:
        output = offline.generate(_job(steps=1))
    assert output.images[0].size == (256, 256)
    assert attempts == []


def test_close_stops_further_generation(tiny_dir: Path) -> None:
    backend = DiffusersTextToImage(tiny_dir, device="cpu")
    backend.close()
    with pytest.raises(StageError) as info:
        backend.generate(_job(steps=1))
    assert info.value.code == "generation.closed"


def test_model_failure_during_generation_is_a_stage_error(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    # A pipeline folder whose text encoder is narrower than the UNet's cross-attention: it
    # loads, but the first denoising step fails inside torch.
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    shutil.rmtree(broken / "text_encoder")
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=600,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
        )
    ).save_pretrained(broken / "text_encoder")
    backend = DiffusersTextToImage(broken, device="cpu")
    with pytest.raises(StageError) as info:
        backend.generate(_job(steps=1))
    assert info.value.code == "generation.failed"
    assert info.value.__cause__ is not None


# --- configuration errors -------------------------------------------------------------------


def test_missing_model_folder_names_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        DiffusersTextToImage(tmp_path / "nowhere")
    assert info.value.code == "model.missing"
    assert "consentry models tiny" in info.value.detail


def test_folder_without_a_pipeline_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        DiffusersTextToImage(tmp_path)
    assert info.value.code == "model.invalid"
    assert "consentry models tiny" in info.value.detail


def test_unloadable_pipeline_and_bad_marker_are_invalid(tiny_dir: Path, tmp_path: Path) -> None:
    no_unet = tmp_path / "no_unet"
    shutil.copytree(tiny_dir, no_unet)
    shutil.rmtree(no_unet / "unet")
    with pytest.raises(ConfigurationError) as info:
        DiffusersTextToImage(no_unet, device="cpu")
    assert info.value.code == "model.invalid"
    assert isinstance(info.value.__cause__, Exception)

    bad_marker = tmp_path / "bad_marker"
    shutil.copytree(tiny_dir, bad_marker)
    (bad_marker / MARKER_FILE).write_text('{"untrained": "yes"}')
    with pytest.raises(ConfigurationError) as info:
        DiffusersTextToImage(bad_marker, device="cpu")
    assert info.value.code == "model.invalid"


def test_model_without_marker_is_not_reported_untrained(tiny_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(tiny_dir, plain)
    (plain / MARKER_FILE).unlink()
    assert DiffusersTextToImage(plain, device="cpu").untrained is False


# --- job validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"width": 0},
        {"width": 250},
        {"height": 2056},
        {"width": -256},
        {"steps": 0},
        {"steps": 201},
        {"steps": True},
        {"steps": 2.0},
        {"num_images": 0},
        {"num_images": 9},
        {"seed": -1},
        {"seed": 2**64},
        {"guidance_scale": -1.0},
        {"guidance_scale": float("nan")},
        {"guidance_scale": 1e6},
        {"prompt": "   "},
        {"prompt": "x" * 5000},
        {"negative_prompt": None},
        {"references": ("not an image",)},
    ],
)
def test_bad_job_parameters_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(BadInputError) as info:
        _job(**overrides)
    assert info.value.code == "generation.invalid_params"


def test_good_job_keeps_its_values_and_freezes_references() -> None:
    reference = Image.new("RGB", (64, 64))
    job = _job(width=MAX_SIDE, height=8, steps=MAX_STEPS, num_images=MAX_IMAGES, references=[reference])
    assert job.references == (reference,)
    assert (job.width, job.height, job.steps, job.num_images) == (MAX_SIDE, 8, MAX_STEPS, MAX_IMAGES)
    with pytest.raises(AttributeError):
        job.steps = 5  # type: ignore[misc]  # assigning to a frozen field is the test
