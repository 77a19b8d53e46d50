"""The local diffusers backend's personalization modes on the tiny, self-built pipeline: image-to-
image over the same components, a subject's LoRA loaded per job (and never seen by a concurrent
job), IP-Adapter conditioning, and adapter training that leaves the serving UNet untouched."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from consentry.gateway.testing import synthetic_photo
from consentry.generation.base import AdapterWeights, GenerationJob, GenerationMode, GenerationOutput
from consentry.generation.diffusers_backend import DiffusersTextToImage
from consentry.generation.ip_adapter_condition import IPAdapterCondition
from consentry.generation.lora_training import LoraTrainingConfig
from consentry.generation.tiny import build_tiny_pipeline
from consentry.generation.tiny_ip_adapter import build_tiny_ip_adapter
from consentry.policies import codes
from consentry.policies.errors import BadInputError, StageError


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("personal") / "tiny", seed=0)


@pytest.fixture(scope="module")
def backend(tiny_dir: Path) -> DiffusersTextToImage:
    return DiffusersTextToImage(tiny_dir, device="cpu")


@pytest.fixture(scope="module")
def photos(faces_dir: Path) -> dict[str, list[Image.Image]]:
    people = {"blair": "Tony_Blair", "bush": "George_W_Bush"}
    return {
        key: [Image.open(faces_dir / "lfw" / n / f"{n}_{i:04d}.jpg").convert("RGB") for i in (2, 3, 4)]
        for key, n in people.items()
    }


# A high learning rate so a few steps visibly move the tiny model (the default suits real ones).
FAST = LoraTrainingConfig(steps=4, rank=4, prior_images=1, class_inference_steps=2, learning_rate=1e-2)


@pytest.fixture(scope="module")
def adapters(
    backend: DiffusersTextToImage, photos: dict[str, list[Image.Image]]
) -> dict[str, AdapterWeights]:
    return {
        key: AdapterWeights(f"adp_{key}", backend.train_adapter(faces, FAST).weights)
        for key, faces in photos.items()
    }


def job(**overrides: Any) -> GenerationJob:
    params: dict[str, Any] = {
        "prompt": "a portrait photo",
        "seed": 3,
        "steps": 4,
        "width": 256,
        "height": 256,
        "guidance_scale": 5.0,
    }
    return GenerationJob(**(params | overrides))


def pixels(output: GenerationOutput) -> np.ndarray:
    return np.asarray(output.images[0], dtype=np.int16)


def unique_parameters(*modules: torch.nn.Module) -> int:
    """Parameters held in memory by ``modules`` together, counting shared storage once."""
    seen: dict[int, int] = {}
    for module in modules:
        for p in module.parameters():
            seen[p.data_ptr()] = p.numel()
    return sum(seen.values())


# -- image-to-image --------------------------------------------------------------------------


def test_img2img_shares_every_weight_with_text_to_image(backend: DiffusersTextToImage) -> None:
    text, image = backend._pipe, backend._img2img
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(image, name) is getattr(text, name), name
    one_copy = unique_parameters(text.unet, text.vae, text.text_encoder)
    assert unique_parameters(text.unet, text.vae, text.text_encoder, image.unet, image.vae) == one_copy


def test_img2img_starts_from_the_reference(
    backend: DiffusersTextToImage, photos: dict[str, list[Image.Image]]
) -> None:
    blair, bush = photos["blair"][0], photos["bush"][0]
    first = backend.generate(job(mode=GenerationMode.img2img, references=(blair,), strength=0.5))
    again = backend.generate(job(mode=GenerationMode.img2img, references=(blair,), strength=0.5))
    other = backend.generate(job(mode=GenerationMode.img2img, references=(bush,), strength=0.5))
    text = backend.generate(job(references=(blair,)))
    assert first.mode is GenerationMode.img2img and text.mode is GenerationMode.txt2img
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).mean() > 2.0
    assert np.abs(pixels(first) - pixels(text)).mean() > 2.0
    # Strength reaches the pipeline. (Whether low strength keeps more of the photo cannot be seen
    # through the tiny model's untrained VAE, which does not reconstruct images.)
    low = backend.generate(job(mode=GenerationMode.img2img, references=(blair,), strength=0.25))
    assert np.abs(pixels(low) - pixels(first)).mean() > 0.5


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"mode": GenerationMode.img2img}, codes.GENERATION_REFERENCE_REQUIRED),
        ({"mode": GenerationMode.ip_adapter}, codes.GENERATION_REFERENCE_REQUIRED),
        ({"strength": 0.0}, codes.GENERATION_STRENGTH_INVALID),
        ({"strength": 1.5}, codes.GENERATION_STRENGTH_INVALID),
        ({"strength": float("nan")}, codes.GENERATION_STRENGTH_INVALID),
        ({"strength": True}, codes.GENERATION_STRENGTH_INVALID),
        (
            {"mode": "img2img", "strength": 0.2, "steps": 2, "references": ("x",)},
            codes.GENERATION_INVALID_PARAMS,
        ),
        (
            {
                "mode": GenerationMode.img2img,
                "strength": 0.2,
                "steps": 2,
                "references": (synthetic_photo(1),),
            },
            codes.GENERATION_STRENGTH_INVALID,
        ),
        ({"mode": "sketch"}, codes.GENERATION_INVALID_PARAMS),
    ],
)
def test_bad_personalization_parameters_are_refused_with_stable_codes(
    overrides: dict[str, Any], code: str
) -> None:
    with pytest.raises(BadInputError) as caught:
        job(**overrides)
    assert caught.value.code == code


# -- LoRA adapters, per job ------------------------------------------------------------------


def test_training_never_touches_the_serving_unet(
    backend: DiffusersTextToImage, photos: dict[str, list[Image.Image]]
) -> None:
    before = {k: v.clone() for k, v in backend._pipe.unet.state_dict().items()}
    steps: list[int] = []
    trained = backend.train_adapter(photos["blair"], FAST, progress=lambda s, _t, _l: steps.append(s))
    assert steps == [1, 2, 3, 4] and trained.prior_loss is not None
    after = backend._pipe.unet.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_stopped_training_raises_interrupted(
    backend: DiffusersTextToImage, photos: dict[str, list[Image.Image]]
) -> None:
    with pytest.raises(StageError) as caught:
        backend.train_adapter(photos["blair"], FAST, should_stop=lambda: True)
    assert caught.value.code == codes.ADAPTER_INTERRUPTED


def test_an_adapter_changes_its_job_only_and_is_unloaded_after(
    backend: DiffusersTextToImage, adapters: dict[str, AdapterWeights]
) -> None:
    base = backend.generate(job())
    with_blair = backend.generate(job(adapter=adapters["blair"]))
    assert with_blair.adapter_id == "adp_blair"
    assert np.abs(pixels(base) - pixels(with_blair)).mean() > 0.5
    assert np.array_equal(pixels(backend.generate(job())), pixels(base))
    assert not getattr(backend._pipe.unet, "peft_config", {})


def test_concurrent_jobs_of_two_subjects_never_see_each_others_adapter(
    backend: DiffusersTextToImage, adapters: dict[str, AdapterWeights]
) -> None:
    """Jobs for two subjects (and one with no adapter) in flight at once, in threads as the gate
    runs them: each gives exactly the pixels it gives alone."""
    plan: list[AdapterWeights | None] = [adapters["blair"], adapters["bush"], None] * 3
    alone = {
        id(a): pixels(backend.generate(job(adapter=a))) for a in (adapters["blair"], adapters["bush"], None)
    }
    assert not np.array_equal(alone[id(adapters["blair"])], alone[id(adapters["bush"])])
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        outputs = list(pool.map(lambda a: backend.generate(job(adapter=a)), plan))
    for adapter, output in zip(plan, outputs, strict=True):
        assert np.array_equal(pixels(output), alone[id(adapter)])
        assert output.adapter_id == (adapter.id if adapter else None)


def test_an_adapter_also_applies_to_img2img(
    backend: DiffusersTextToImage, adapters: dict[str, AdapterWeights], photos: dict[str, list[Image.Image]]
) -> None:
    ref = (photos["blair"][1],)
    plain = backend.generate(job(mode=GenerationMode.img2img, references=ref))
    adapted = backend.generate(job(mode=GenerationMode.img2img, references=ref, adapter=adapters["blair"]))
    assert np.abs(pixels(plain) - pixels(adapted)).mean() > 0.2


def test_garbage_adapter_weights_fail_the_job_and_leave_the_model_clean(
    backend: DiffusersTextToImage,
) -> None:
    base = backend.generate(job())
    with pytest.raises(StageError) as caught:
        backend.generate(job(adapter=AdapterWeights("adp_bad", b"not safetensors")))
    assert caught.value.code == codes.ADAPTER_UNREADABLE
    assert np.array_equal(pixels(backend.generate(job())), pixels(base))


# -- IP-Adapter ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ip_backend(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DiffusersTextToImage:
    paths = build_tiny_ip_adapter(tiny_dir, tmp_path_factory.mktemp("ip") / "ip", seed=0)
    condition = IPAdapterCondition(paths.weights_file, paths.image_encoder_dir, scale=0.8)
    return DiffusersTextToImage(tiny_dir, device="cpu", ip_adapter=condition)


def test_ip_adapter_mode_is_offered_only_when_configured(
    backend: DiffusersTextToImage, ip_backend: DiffusersTextToImage
) -> None:
    assert GenerationMode.ip_adapter not in backend.capabilities.modes
    assert GenerationMode.ip_adapter in ip_backend.capabilities.modes
    with pytest.raises(BadInputError) as caught:
        backend.generate(job(mode=GenerationMode.ip_adapter, references=(synthetic_photo(2),)))
    assert caught.value.code == codes.GENERATION_MODE_UNAVAILABLE


def test_ip_adapter_conditions_on_the_references_and_leaves_other_modes_alone(
    backend: DiffusersTextToImage, ip_backend: DiffusersTextToImage, photos: dict[str, list[Image.Image]]
) -> None:
    blair, bush = (photos["blair"][0],), (photos["bush"][0],)
    on_blair = ip_backend.generate(job(mode=GenerationMode.ip_adapter, references=blair))
    on_bush = ip_backend.generate(job(mode=GenerationMode.ip_adapter, references=bush))
    assert on_blair.mode is GenerationMode.ip_adapter
    assert np.abs(pixels(on_blair) - pixels(on_bush)).mean() > 0.5
    # With the adapter attached, text-to-image and image-to-image give the base model's pixels.
    assert np.array_equal(pixels(ip_backend.generate(job())), pixels(backend.generate(job())))
    img2img = job(mode=GenerationMode.img2img, references=blair)
    assert np.array_equal(pixels(ip_backend.generate(img2img)), pixels(backend.generate(img2img)))


def test_training_works_with_an_ip_adapter_attached(
    ip_backend: DiffusersTextToImage, photos: dict[str, list[Image.Image]]
) -> None:
    trained = ip_backend.train_adapter(photos["bush"], FAST)
    out = ip_backend.generate(job(adapter=AdapterWeights("adp_ip", trained.weights)))
    assert out.adapter_id == "adp_ip"
