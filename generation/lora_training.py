"""DreamBooth-LoRA training of a per-identity UNet adapter, with prior preservation.

Training runs in two phases so a gateway can hold the shared generation pipeline's lock only
briefly and never modify that pipeline's UNet:

1. :func:`prepare_training_data` borrows the shared pipeline (the caller holds its lock) to
   render the class ("prior") images with the *base* model and to encode photos, class images
   and the two prompts into tensors. This is the only phase that touches the shared pipeline.
2. :func:`train_unet_lora` trains LoRA layers on a *private* UNet copy the caller loads (in
   fp32), from those tensors alone, and returns the adapter as safetensors bytes.

The adapter is saved with ``lora_alpha == rank`` (LoRA scale 1), which is what diffusers
assumes when a state dict carries no alphas, so :mod:`generation.lora` loads it unchanged.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from consentry.policies import codes
from consentry.policies.errors import BadInputError, ConsentryError, StageError

# The attention projections: the usual DreamBooth-LoRA targets, small and identity-bearing.
LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
_MAX_PROMPT = 1000


_INT_LIMITS = {
    "steps": (1, 2000),
    "rank": (1, 64),
    "prior_images": (0, 50),
    "class_inference_steps": (1, 100),
    "seed": (0, 2**63 - 1),
    "batch_size": (1, 16),
}


def _bad(name: str, rule: str, value: object) -> BadInputError:
    return BadInputError(f"{name} must be {rule}, got {value!r}", code=codes.ADAPTER_INVALID_PARAMS)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is a client bug, not 1


def _number(name: str, value: object, low: float, high: float, *, low_open: bool) -> None:
    number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    if not (low < number if low_open else low <= number) or not number <= high:  # NaN fails both
        raise _bad(name, f"a number in {'(' if low_open else '['}{low}, {high}]", value)


@dataclass(frozen=True, kw_only=True)
class LoraTrainingConfig:
    """What to train; every field is checked on construction (``BadInputError``)."""

    steps: int = 200
    rank: int = 4
    prior_images: int = 4  # 0 turns prior preservation off
    learning_rate: float = 1e-4
    prior_loss_weight: float = 1.0
    instance_prompt: str = "a photo of sks person"
    class_prompt: str = "a photo of a person"
    resolution: int | None = None  # None: the pipeline's default (unet sample_size * vae scale)
    class_inference_steps: int = 20
    seed: int = 0
    batch_size: int = 1  # instance latents per step (and as many class latents)

    def __post_init__(self) -> None:
        for name, (low, high) in _INT_LIMITS.items():
            value = getattr(self, name)
            if not _is_int(value) or not low <= value <= high:
                raise _bad(name, f"an integer in {low}..{high}", value)
        _number("learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        _number("prior_loss_weight", self.prior_loss_weight, 0.0, 100.0, low_open=False)
        size = self.resolution
        # A multiple of 64 keeps the latent divisible through every UNet downsampling.
        if size is not None and (not _is_int(size) or not 64 <= size <= 2048 or size % 64):
            raise _bad("resolution", "None or a multiple of 64 in 64..2048", size)
        for name in ("instance_prompt", "class_prompt"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip() or len(value) > _MAX_PROMPT:
                raise _bad(name, f"a non-empty string of at most {_MAX_PROMPT} characters", value)


@dataclass(frozen=True)
class TrainingData:
    """Everything training needs, computed once from the shared pipeline (fp32, on the CPU)."""

    instance_latents: torch.Tensor  # (photos, C, h, w), already times vae scaling_factor
    class_latents: torch.Tensor  # (prior_images, C, h, w); zero rows without prior preservation
    instance_embeddings: torch.Tensor  # (1, tokens, dim) text-encoder output of instance_prompt
    class_embeddings: torch.Tensor  # (1, tokens, dim) of class_prompt
    scheduler_config: dict[str, Any]  # the pipeline scheduler's config, for DDPMScheduler
    resolution: int


@dataclass(frozen=True)
class TrainedAdapter:
    """A trained adapter and how training went."""

    weights: bytes
    """safetensors bytes of the diffusers-format UNet LoRA state dict (``...to_q.lora.down.weight``
    [rank, in], ``...lora.up.weight`` [out, rank], fp32), keys WITHOUT the ``unet.`` prefix."""
    rank: int
    steps: int
    prior_images: int
    instance_prompt: str
    instance_loss: float
    """Mean instance MSE over the last 10% of steps (at least one)."""
    prior_loss: float | None
    """Mean prior-preservation MSE over the same steps; None when prior_images is 0."""
    elapsed_ms: float
    """Wall time of :func:`train_unet_lora` (not of data preparation)."""
    peak_memory_bytes: int
    """On CUDA, ``torch.cuda.max_memory_allocated`` of the UNet's device since training began
    (process-wide: includes other work on that GPU). On the CPU, the growth of the process's
    peak RSS (``getrusage`` ru_maxrss) during training; 0 if an earlier peak was higher."""


def _to_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """Center-crop to a square, resize, and scale to [-1, 1] as the VAE expects: (3, size, size)."""
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def _encode_prompt(pipe: Any, prompt: str) -> torch.Tensor:
    tokens = pipe.tokenizer(
        prompt,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return pipe.text_encoder(tokens.input_ids.to(pipe.device))[0].float().cpu()


def prepare_training_data(
    pipe: Any,
    photos: Sequence[Image.Image],
    config: LoraTrainingConfig,
    *,
    call_kwargs: Mapping[str, Any] | None = None,
) -> TrainingData:
    """Render class images with the base model and encode everything (caller holds the pipe's lock).

    ``call_kwargs`` go to every class-image call (e.g. an attached IP-Adapter's neutral input)."""
    if not photos or not all(isinstance(photo, Image.Image) for photo in photos):
        raise BadInputError(
            "training needs at least one photo (PIL images)", code=codes.ADAPTER_PHOTOS_REQUIRED
        )
    if getattr(pipe, "text_encoder_2", None) is not None or pipe.unet.config.get("addition_embed_type"):
        # SDXL-style UNets need pooled embeddings and size conditioning this trainer does not build.
        raise StageError(
            f"LoRA training supports Stable Diffusion 1/2-style pipelines, not {type(pipe).__name__}",
            code=codes.ADAPTER_UNSUPPORTED,
        )
    size = config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    try:
        pipe.set_progress_bar_config(disable=True)
        class_images = [
            pipe(
                prompt=config.class_prompt,
                num_inference_steps=config.class_inference_steps,
                height=size,
                width=size,
                output_type="pil",
                generator=torch.Generator("cpu").manual_seed(config.seed + index),
                **(call_kwargs or {}),
            ).images[0]
            for index in range(config.prior_images)
        ]
        vae = pipe.vae
        generator = torch.Generator("cpu").manual_seed(config.seed)
        with torch.no_grad():

            def encode(images: Sequence[Image.Image]) -> torch.Tensor:
                latents = [
                    vae.encode(_to_pixels(image, size)[None].to(pipe.device, vae.dtype))
                    .latent_dist.sample(generator)
                    .float()
                    .cpu()
                    for image in images  # one at a time: a large VAE at 1024 px needs GBs per image
                ]
                return torch.cat(latents) * vae.config.scaling_factor

            instance_latents = encode(photos)
            class_latents = encode(class_images) if class_images else instance_latents[:0]
            return TrainingData(
                instance_latents=instance_latents,
                class_latents=class_latents,
                instance_embeddings=_encode_prompt(pipe, config.instance_prompt),
                class_embeddings=_encode_prompt(pipe, config.class_prompt),
                scheduler_config=dict(pipe.scheduler.config),
                resolution=size,
            )
    except ConsentryError:
        raise
    except Exception as exc:  # torch/diffusers errors, out-of-memory included
        raise StageError(
            f"preparing LoRA training data failed: {type(exc).__name__}: {exc}",
            code=codes.ADAPTER_TRAINING_FAILED,
        ) from exc


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _add_lora(
    unet: torch.nn.Module, device: torch.device, config: LoraTrainingConfig
) -> list[torch.nn.Parameter]:
    from peft import LoraConfig

    if getattr(unet, "peft_config", None):
        raise StageError(
            "the UNet copy already carries an adapter; pass a fresh copy", code=codes.ADAPTER_TRAINING_FAILED
        )
    unet.requires_grad_(False)
    # peft's gaussian init draws from the global RNG: seed it, without disturbing the caller's.
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        cast(Any, unet).add_adapter(  # diffusers' PeftAdapterMixin, which torch's typing cannot see
            LoraConfig(
                r=config.rank,
                lora_alpha=config.rank,
                init_lora_weights="gaussian",
                target_modules=list(LORA_TARGETS),
            )
        )
    params = [param for param in unet.parameters() if param.requires_grad]
    for param in params:  # AdamW on fp16 weights underflows; the LoRA weights are tiny anyway
        param.data = param.data.float()
    return params


def _batch(
    data: TrainingData, prior: bool, size: int, scheduler: Any, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One seeded step's (noisy latents, timesteps, text embeddings, regression target)."""
    pick = torch.randint(data.instance_latents.shape[0], (size,), generator=generator)
    latents = [data.instance_latents[pick]]
    embeddings = [data.instance_embeddings.expand(size, -1, -1)]
    if prior:  # standard DreamBooth: instance and class examples share one batch
        pick = torch.randint(data.class_latents.shape[0], (size,), generator=generator)
        latents.append(data.class_latents[pick])
        embeddings.append(data.class_embeddings.expand(size, -1, -1))
    clean = torch.cat(latents)
    noise = torch.randn(clean.shape, generator=generator)
    steps = torch.randint(scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator)
    kind = scheduler.config.prediction_type
    target = {"epsilon": noise, "sample": clean}.get(kind)
    if target is None:  # v_prediction (checked before training)
        target = scheduler.get_velocity(clean, noise, steps)
    return scheduler.add_noise(clean, noise, steps), steps, torch.cat(embeddings), target


def train_unet_lora(
    unet: torch.nn.Module,
    data: TrainingData,
    config: LoraTrainingConfig,
    *,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainedAdapter:
    """Train LoRA layers on ``unet`` (a private copy; it keeps the adapter) and return them.

    ``progress(step, total, loss)`` is called after every step (step counts from 1);
    ``should_stop()`` before every step, and True raises ``ADAPTER_INTERRUPTED``.
    """
    from diffusers import DDPMScheduler
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save

    started = time.perf_counter()
    device = next(unet.parameters()).device
    rss_before = _max_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prior = config.prior_images > 0 and data.class_latents.shape[0] > 0
    mse = torch.nn.functional.mse_loss
    try:
        params = _add_lora(unet, device, config)
        scheduler = DDPMScheduler.from_config(data.scheduler_config)
        if scheduler.config.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise StageError(
                f"unsupported prediction_type {scheduler.config.prediction_type!r}",
                code=codes.ADAPTER_UNSUPPORTED,
            )
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
        # A CPU generator draws the same batches, noise and timesteps on every device.
        generator = torch.Generator("cpu").manual_seed(config.seed)
        size = config.batch_size
        losses: list[tuple[float, float]] = []
        unet.train()
        for step in range(1, config.steps + 1):
            if should_stop is not None and should_stop():
                raise StageError(
                    f"LoRA training stopped at step {step}/{config.steps}", code=codes.ADAPTER_INTERRUPTED
                )
            noisy, timesteps, embeddings, target = (
                t.to(device) for t in _batch(data, prior, size, scheduler, generator)
            )
            pred = unet(noisy, timesteps, encoder_hidden_states=embeddings).sample.float()
            instance_loss = mse(pred[:size], target[:size])
            prior_loss = mse(pred[size:], target[size:]) if prior else torch.zeros((), device=device)
            loss = instance_loss + config.prior_loss_weight * prior_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.item())
            if not math.isfinite(value):
                raise StageError(
                    f"LoRA training diverged (loss {value}) at step {step}; lower the learning rate",
                    code=codes.ADAPTER_TRAINING_FAILED,
                )
            losses.append((float(instance_loss.item()), float(prior_loss.item())))
            if progress is not None:
                progress(step, config.steps, value)
        unet.eval()
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        weights = save({key: t.detach().to("cpu", torch.float32).contiguous() for key, t in state.items()})
    except ConsentryError:
        raise
    except Exception as exc:  # torch/diffusers/peft errors, out-of-memory included
        raise StageError(
            f"LoRA training failed: {type(exc).__name__}: {exc}", code=codes.ADAPTER_TRAINING_FAILED
        ) from exc
    tail = losses[-max(1, math.ceil(len(losses) / 10)) :]
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
    else:
        peak = max(0, _max_rss_bytes() - rss_before)
    return TrainedAdapter(
        weights=weights,
        rank=config.rank,
        steps=config.steps,
        prior_images=data.class_latents.shape[0] if prior else 0,
        instance_prompt=config.instance_prompt,
        instance_loss=sum(item[0] for item in tail) / len(tail),
        prior_loss=sum(item[1] for item in tail) / len(tail) if prior else None,
        elapsed_ms=(time.perf_counter() - started) * 1000.0,
        peak_memory_bytes=peak,
    )


def train_lora(
    pipe: Any,
    unet_copy: torch.nn.Module,
    photos: Sequence[Image.Image],
    config: LoraTrainingConfig,
    *,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainedAdapter:
    """Both phases in one call (the caller holds the pipe's lock for the whole of it)."""
    data = prepare_training_data(pipe, photos, config)
    return train_unet_lora(unet_copy, data, config, progress=progress, should_stop=should_stop)
