"""DreamBooth-LoRA training and per-request adapter loading on the tiny (self-built) pipeline.

Three real photos of one person are the instance images. The model is random, so these tests
check the mechanics (phases, seeding, prior preservation, isolation of the shared pipeline,
clean unloading, refusals), not that the adapter learns a likeness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save

from consentry.generation.lora import LoraTiming, applied_lora, parse_lora_weights
from consentry.generation.lora_training import (
    LoraTrainingConfig,
    TrainedAdapter,
    TrainingData,
    prepare_training_data,
    train_lora,
    train_unet_lora,
)
from consentry.generation.tiny import build_tiny_pipeline
from consentry.policies import codes
from consentry.policies.errors import BadInputError, StageError

STEPS = 8
# A large learning rate so that eight steps move the (zero-initialised) LoRA "up" matrices enough
# to change the output visibly; this is a mechanics test, not a recipe.
CONFIG = LoraTrainingConfig(steps=STEPS, rank=4, prior_images=2, class_inference_steps=2, learning_rate=1e-2)


@dataclass(frozen=True)
class Trained:
    adapter: TrainedAdapter
    data: TrainingData
    calls: list[tuple[int, int, float]]
    unet_before: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("lora") / "tiny", seed=0)


@pytest.fixture(scope="module")
def pipe(tiny_dir: Path) -> Any:
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(str(tiny_dir), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def photos(faces_dir: Path) -> list[Image.Image]:
    # Single-face frames of one person (the manifest marks 0001 as a group shot).
    folder = faces_dir / "lfw" / "Tony_Blair"
    return [Image.open(folder / f"Tony_Blair_{n:04d}.jpg").convert("RGB") for n in (2, 3, 4)]


def unet_copy(tiny_dir: Path) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_dir / "unet")


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def assert_pristine(pipe: Any, before: dict[str, torch.Tensor]) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    after = pipe.unet.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[key], before[key]) for key in before)
    assert not any(isinstance(module, BaseTunerLayer) for module in pipe.unet.modules())
    assert not any(pipe.get_list_adapters().values())


def generate(pipe: Any) -> np.ndarray:
    result = pipe(
        prompt="a photo of sks person",
        num_inference_steps=2,
        height=256,
        width=256,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
    )
    return np.asarray(result.images)


@pytest.fixture(scope="module")
def trained(pipe: Any, tiny_dir: Path, photos: list[Image.Image]) -> Trained:
    before = snapshot(pipe.unet)
    data = prepare_training_data(pipe, photos, CONFIG)
    calls: list[tuple[int, int, float]] = []
    adapter = train_unet_lora(unet_copy(tiny_dir), data, CONFIG, progress=lambda *a: calls.append(a))
    return Trained(adapter, data, calls, before)


def test_training_reports_every_step_and_returns_lora_weights(pipe: Any, trained: Trained) -> None:
    assert [(step, total) for step, total, _ in trained.calls] == [(n, STEPS) for n in range(1, STEPS + 1)]
    assert all(math.isfinite(loss) for *_, loss in trained.calls)
    parsed = parse_lora_weights(trained.adapter.weights, pipe.unet)
    assert parsed and all(key.startswith("unet.") for key in parsed)
    for key, tensor in parsed.items():
        assert key.endswith((".lora.down.weight", ".lora.up.weight"))
        assert (tensor.shape[0] if key.endswith("down.weight") else tensor.shape[1]) == 4
    adapter = trained.adapter
    assert (adapter.rank, adapter.steps, adapter.instance_prompt) == (4, STEPS, CONFIG.instance_prompt)
    assert adapter.elapsed_ms > 0 and adapter.peak_memory_bytes >= 0


def test_prior_preservation_renders_class_images(trained: Trained) -> None:
    assert trained.data.class_latents.shape == (2, *trained.data.instance_latents.shape[1:])
    assert trained.data.instance_latents.shape == (3, 4, 32, 32)  # the tiny default, 256 px
    assert trained.adapter.prior_images == 2
    assert trained.adapter.prior_loss is not None and math.isfinite(trained.adapter.prior_loss)
    assert math.isfinite(trained.adapter.instance_loss)


def test_same_seed_same_bytes_and_no_prior(
    pipe: Any, tiny_dir: Path, photos: list[Image.Image], trained: Trained
) -> None:
    again = train_lora(pipe, unet_copy(tiny_dir), photos, CONFIG)
    assert again.weights == trained.adapter.weights
    no_prior = LoraTrainingConfig(steps=2, prior_images=0, class_inference_steps=2)
    plain = train_lora(pipe, unet_copy(tiny_dir), photos, no_prior)
    assert plain.prior_loss is None and plain.prior_images == 0


def test_training_leaves_the_shared_unet_alone(pipe: Any, trained: Trained) -> None:
    assert_pristine(pipe, trained.unet_before)


def test_applied_adapter_changes_output_and_unloads_bit_identically(pipe: Any, trained: Trained) -> None:
    base = generate(pipe)
    with applied_lora(pipe, trained.adapter.weights, "subject-1") as timing:
        assert isinstance(timing, LoraTiming) and timing.load_ms > 0 and timing.unload_ms is None
        assert pipe.get_list_adapters() == {"unet": ["subject-1"]}
        tuned = generate(pipe)
    assert timing.unload_ms is not None and timing.unload_ms > 0
    assert not np.array_equal(tuned, base)
    assert np.array_equal(generate(pipe), base)
    assert_pristine(pipe, trained.unet_before)


def test_adapter_is_removed_when_the_block_raises(pipe: Any, trained: Trained) -> None:
    with pytest.raises(RuntimeError, match="boom"), applied_lora(pipe, trained.adapter.weights, "a"):
        raise RuntimeError("boom")
    assert_pristine(pipe, trained.unet_before)


@pytest.mark.parametrize("name", ["", "a.b", "half", "train"])
def test_names_peft_cannot_hold_are_refused(pipe: Any, trained: Trained, name: str) -> None:
    with pytest.raises(StageError) as caught, applied_lora(pipe, trained.adapter.weights, name):
        pytest.fail("the block must not run")
    assert caught.value.code == codes.GENERATION_FAILED
    assert_pristine(pipe, trained.unet_before)


def test_duplicate_adapter_name_keeps_the_loaded_one(pipe: Any, trained: Trained) -> None:
    with applied_lora(pipe, trained.adapter.weights, "same"):
        with pytest.raises(StageError) as caught, applied_lora(pipe, trained.adapter.weights, "same"):
            pass
        assert caught.value.code == codes.GENERATION_FAILED
        assert pipe.get_list_adapters() == {"unet": ["same"]}
    assert_pristine(pipe, trained.unet_before)


@pytest.mark.parametrize(
    "error, code",
    [
        (ValueError("bad checkpoint"), codes.ADAPTER_UNREADABLE),
        (RuntimeError("oom"), codes.GENERATION_FAILED),
    ],
)
def test_a_failed_load_is_cleaned_up(
    pipe: Any, trained: Trained, monkeypatch: pytest.MonkeyPatch, error: Exception, code: str
) -> None:
    real = pipe.load_lora_weights

    def half_load(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)  # the layers are injected, then the load "fails"
        raise error

    monkeypatch.setattr(pipe, "load_lora_weights", half_load)
    with pytest.raises(StageError) as caught, applied_lora(pipe, trained.adapter.weights, "partial"):
        pytest.fail("the block must not run")
    assert caught.value.code == code
    assert_pristine(pipe, trained.unet_before)


def foreign_adapter(pipe: Any) -> bytes:
    """Adapter weights of a UNet with a different cross-attention width (another base model)."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    other = UNet2DConditionModel.from_config({**pipe.unet.config, "cross_attention_dim": 16})
    other.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_k", "to_v"]))
    return save(convert_state_dict_to_diffusers(get_peft_model_state_dict(other)))


def good_state(trained: Trained) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(trained.adapter.weights)


def edited(trained: Trained, key: str = "", value: torch.Tensor | None = None, drop: bool = False) -> bytes:
    state = good_state(trained)
    first = next(iter(state))
    if drop:
        del state[first]
    if value is not None:
        state[key or first] = value
    return save(state)


BAD_ADAPTERS: dict[str, Any] = {
    "garbage bytes": lambda pipe, t: b"\x00definitely not safetensors",
    "empty": lambda pipe, t: b"",
    "no tensors": lambda pipe, t: save({}),
    "other base model": lambda pipe, t: foreign_adapter(pipe),
    "unknown module": lambda pipe, t: edited(t, "mid_block.nope.lora.down.weight", torch.zeros(4, 8)),
    "not a lora key": lambda pipe, t: edited(t, "conv_in.weight", torch.zeros(4, 4)),
    "wrong shape": lambda pipe, t: edited(t, value=torch.zeros(4, 7)),
    "half a pair": lambda pipe, t: edited(t, drop=True),
    "not finite": lambda pipe, t: edited(t, value=torch.full((4, 64), math.nan)),
}


@pytest.mark.parametrize("case", BAD_ADAPTERS)
def test_unusable_adapter_is_refused_before_the_pipeline_changes(
    pipe: Any, trained: Trained, case: str
) -> None:
    weights = BAD_ADAPTERS[case](pipe, trained)
    with pytest.raises(StageError) as caught, applied_lora(pipe, weights, "bad"):
        pytest.fail("the block must not run")
    assert caught.value.code == codes.ADAPTER_UNREADABLE
    assert_pristine(pipe, trained.unet_before)


def test_should_stop_interrupts(tiny_dir: Path, trained: Trained) -> None:
    steps: list[int] = []
    with pytest.raises(StageError) as caught:
        train_unet_lora(
            unet_copy(tiny_dir),
            trained.data,
            CONFIG,
            progress=lambda step, total, loss: steps.append(step),
            should_stop=lambda: len(steps) >= 3,
        )
    assert caught.value.code == codes.ADAPTER_INTERRUPTED
    assert steps == [1, 2, 3]


def test_a_unet_that_already_has_an_adapter_is_refused(tiny_dir: Path, trained: Trained) -> None:
    unet = unet_copy(tiny_dir)
    train_unet_lora(unet, trained.data, LoraTrainingConfig(steps=1, prior_images=0))
    with pytest.raises(StageError) as caught:
        train_unet_lora(unet, trained.data, LoraTrainingConfig(steps=1, prior_images=0))
    assert caught.value.code == codes.ADAPTER_TRAINING_FAILED


def test_photos_are_required(pipe: Any) -> None:
    with pytest.raises(BadInputError) as caught:
        prepare_training_data(pipe, [], CONFIG)
    assert caught.value.code == codes.ADAPTER_PHOTOS_REQUIRED


@pytest.mark.parametrize(
    "field, value",
    [
        ("steps", 0),
        ("steps", 2001),
        ("steps", True),
        ("steps", 2.0),
        ("rank", 65),
        ("prior_images", 51),
        ("prior_images", -1),
        ("class_inference_steps", 0),
        ("learning_rate", 0.0),
        ("learning_rate", math.nan),
        ("learning_rate", "0.1"),
        ("prior_loss_weight", -1.0),
        ("resolution", 100),
        ("resolution", 0),
        ("seed", -1),
        ("batch_size", 0),
        ("instance_prompt", ""),
        ("class_prompt", None),
    ],
)
def test_invalid_config_is_bad_input(field: str, value: Any) -> None:
    with pytest.raises(BadInputError) as caught:
        LoraTrainingConfig(**{field: value})
    assert caught.value.code == codes.ADAPTER_INVALID_PARAMS
