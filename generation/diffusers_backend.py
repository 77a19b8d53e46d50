"""Local diffusers generation: text-to-image, image-to-image, LoRA adapters, IP-Adapter.

Any folder that ``DiffusionPipeline.save_pretrained`` wrote (Stable Diffusion, SDXL, or the
project's own tiny test pipeline) loads here. Loading never touches the network: the path is
resolved to an existing folder before diffusers sees it (so it can never be taken for a hub id)
and ``local_files_only=True`` is passed to every component, which is what diffusers and
transformers check before any download. No process-wide environment variable is changed.

Every mode runs on one set of loaded components: image-to-image is a ``from_pipe`` view of the
text-to-image pipeline, a subject's LoRA adapter is loaded into the shared UNet for one job and
unloaded after it, and an IP-Adapter (when configured) is attached once.

A safety checker that the model ships is kept; when it flags an image (and blacks it out) the
run fails closed instead of releasing a black square. Models without one stay without one.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from consentry.detectors.devices import resolve_device
from consentry.generation.base import (
    GenerationJob,
    GenerationMode,
    GenerationOutput,
    GeneratorCapabilities,
)
from consentry.generation.ip_adapter_condition import IPAdapterCondition
from consentry.generation.lora import applied_lora
from consentry.generation.lora_training import (
    LoraTrainingConfig,
    TrainedAdapter,
    prepare_training_data,
    train_unet_lora,
)
from consentry.generation.references import fit_reference
from consentry.policies import codes
from consentry.policies.errors import BadInputError, ConfigurationError, ConsentryError, StageError

logger = logging.getLogger(__name__)

# Optional file in a model folder describing where the model came from; the tiny builder writes
# {"untrained": true, "built_by": "consentry models tiny", ...}. Absent means a normal model.
MARKER_FILE = "consentry-model.json"

_HINT = (
    "point the generation model setting at a diffusers pipeline folder, or build the offline "
    "test model with `consentry models tiny DIR`"
)


def read_untrained_marker(model_dir: Path) -> bool:
    """Whether the folder's marker file declares the model untrained (False when absent)."""
    path = model_dir / MARKER_FILE
    if not path.exists():
        return False
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"{path} is not readable JSON ({exc}); {_HINT}", code=codes.MODEL_INVALID
        ) from exc
    untrained = marker.get("untrained", False) if isinstance(marker, dict) else None
    if not isinstance(untrained, bool):
        raise ConfigurationError(
            f"{path} must be a JSON object whose 'untrained' is true or false", code=codes.MODEL_INVALID
        )
    return untrained


class DiffusersTextToImage:
    """A :class:`generation.base.Generator` backed by a local diffusers pipeline.

    The pipeline is loaded once in the constructor (slow: seconds to minutes for real models)
    and reused. Calls are serialised with a lock: a diffusers pipeline keeps per-run state in
    its scheduler, and the gateway may still be running a timed-out call in another thread.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str = "auto",
        dtype: torch.dtype | None = None,
        ip_adapter: IPAdapterCondition | None = None,
    ) -> None:
        self.model_dir = Path(model_dir).expanduser().resolve()
        if not self.model_dir.is_dir():
            raise ConfigurationError(
                f"model folder {self.model_dir} does not exist; {_HINT}", code=codes.MODEL_MISSING
            )
        if not (self.model_dir / "model_index.json").is_file():
            raise ConfigurationError(
                f"{self.model_dir} is not a diffusers pipeline folder (no model_index.json); {_HINT}",
                code=codes.MODEL_INVALID,
            )
        self.name = self.model_dir.name
        self.untrained = read_untrained_marker(self.model_dir)
        self.device = resolve_device(device)
        # Half precision halves GPU memory and time; CPUs are slow (or unsupported) at fp16.
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self._lock = threading.Lock()
        self._pipe: Any = self._load()
        self._ip_adapter = ip_adapter
        if ip_adapter is not None:
            ip_adapter.attach(self._pipe)
        self._img2img: Any = self._image_to_image()

    def _image_to_image(self) -> Any:
        """The image-to-image pipeline over the very same components (``from_pipe`` shares the
        modules: no weights are loaded or copied)."""
        from diffusers import AutoPipelineForImage2Image

        try:
            img2img = AutoPipelineForImage2Image.from_pipe(self._pipe)
        except Exception as exc:  # a pipeline class with no image-to-image sibling
            raise ConfigurationError(
                f"{type(self._pipe).__name__} in {self.model_dir} has no image-to-image form: {exc}",
                code=codes.MODEL_INVALID,
            ) from exc
        img2img.set_progress_bar_config(disable=True)
        return img2img

    def _load(self) -> Any:
        import diffusers
        from diffusers import DiffusionPipeline
        from diffusers.utils import is_accelerate_available
        from packaging.version import Version

        # diffusers 0.42 renamed ``torch_dtype`` to ``dtype`` (the old name warns on each load).
        new_kwarg = Version(diffusers.__version__) >= Version("0.42")
        dtype_kwarg = {"dtype" if new_kwarg else "torch_dtype": self.dtype}
        try:
            pipe = DiffusionPipeline.from_pretrained(
                str(self.model_dir),
                local_files_only=True,
                **dtype_kwarg,
                # Without accelerate diffusers falls back anyway, with a warning on every load.
                low_cpu_mem_usage=is_accelerate_available(),
            )
            pipe = pipe.to(self.device)
        except Exception as exc:  # any loader failure means the folder is unusable
            raise ConfigurationError(
                f"cannot load the diffusers pipeline in {self.model_dir}: "
                f"{type(exc).__name__}: {exc}; {_HINT}",
                code=codes.MODEL_INVALID,
            ) from exc
        if "prompt" not in inspect.signature(pipe.__call__).parameters:
            raise ConfigurationError(
                f"{self.model_dir} holds a {type(pipe).__name__}, which takes no text prompt; "
                "a text-to-image pipeline is needed",
                code=codes.MODEL_INVALID,
            )
        pipe.set_progress_bar_config(disable=True)
        checker = getattr(pipe, "safety_checker", None)
        logger.info(
            "loaded %s from %s on %s (%s), safety checker: %s, untrained: %s",
            type(pipe).__name__,
            self.model_dir,
            self.device,
            self.dtype,
            "none configured" if checker is None else type(checker).__name__,
            self.untrained,
        )
        return pipe

    @property
    def capabilities(self) -> GeneratorCapabilities:
        modes = {GenerationMode.txt2img, GenerationMode.img2img}
        if self._ip_adapter is not None:
            modes.add(GenerationMode.ip_adapter)
        return GeneratorCapabilities(modes=frozenset(modes), adapters=True)

    def _pipeline_for(self, job: GenerationJob, generator: torch.Generator) -> tuple[Any, dict[str, Any]]:
        """The pipeline a job's mode runs on, and its call arguments. Every pipeline is a view of
        the same loaded components, so no mode holds a second copy of the weights."""
        kwargs: dict[str, Any] = {
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt or None,
            "num_inference_steps": job.steps,
            "guidance_scale": job.guidance_scale,
            "num_images_per_prompt": job.num_images,
            "generator": generator,
            "output_type": "pil",
        }
        if job.mode is GenerationMode.ip_adapter:
            if self._ip_adapter is None:
                raise BadInputError(
                    f"{self.name} has no IP-Adapter configured", code=codes.GENERATION_MODE_UNAVAILABLE
                )
            kwargs |= self._ip_adapter.call_kwargs(job.references)
        elif self._ip_adapter is not None:
            kwargs |= self._ip_adapter.neutral_kwargs()
        if job.mode is GenerationMode.img2img:
            init = fit_reference(job.references[0], job.width, job.height)
            return self._img2img, kwargs | {"image": init, "strength": job.strength}
        return self._pipe, kwargs | {"width": job.width, "height": job.height}

    def generate(self, job: GenerationJob) -> GenerationOutput:
        """Run the job's mode; the same job gives the same pixels on the same device. A job's
        LoRA adapter is loaded under the lock and unloaded before the lock is released, so no
        other job ever runs with it."""
        with self._lock:
            if self._pipe is None:
                raise StageError(f"generator {self.name} is closed", code=codes.GENERATION_CLOSED)
            # A CPU generator makes the initial noise identical on every device.
            generator = torch.Generator(device="cpu").manual_seed(job.seed)
            pipe, kwargs = self._pipeline_for(job, generator)
            started = time.perf_counter()
            adapter = job.adapter
            lora = (
                applied_lora(self._pipe, adapter.weights, adapter_name=f"job_{adapter.id}")
                if adapter is not None
                else nullcontext()
            )
            try:
                with lora, torch.inference_mode():
                    result = pipe(**kwargs)
            except ConsentryError:
                raise
            except Exception as exc:  # torch/diffusers errors, CUDA OOM included
                raise StageError(
                    f"image generation failed in {self.name}: {type(exc).__name__}: {exc}",
                    code=codes.GENERATION_FAILED,
                ) from exc
            elapsed_ms = (time.perf_counter() - started) * 1000.0
        flagged = getattr(result, "nsfw_content_detected", None)
        if flagged and any(flagged):
            raise StageError(
                f"the safety checker of {self.name} flagged {sum(map(bool, flagged))} "
                "image(s); nothing is released",
                code=codes.GENERATION_SAFETY_FILTERED,
            )
        images = tuple(image.convert("RGB") for image in result.images)
        if len(images) != job.num_images:
            raise StageError(
                f"{self.name} returned {len(images)} images, {job.num_images} were asked for",
                code=codes.GENERATION_FAILED,
            )
        return GenerationOutput(
            images=images,
            model=self.name,
            untrained=self.untrained,
            seed=job.seed,
            steps=job.steps,
            elapsed_ms=elapsed_ms,
            mode=job.mode,
            adapter_id=adapter.id if adapter is not None else None,
        )

    def train_adapter(
        self,
        photos: Sequence[Image.Image],
        config: LoraTrainingConfig,
        *,
        progress: Callable[[int, int, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainedAdapter:
        """DreamBooth-LoRA on a private copy of the UNet. The shared pipeline is locked only to
        draw the class images and encode the training data; training itself never touches the
        UNet that serves requests, so generation goes on meanwhile."""
        with self._lock:
            if self._pipe is None:
                raise StageError(f"generator {self.name} is closed", code=codes.GENERATION_CLOSED)
            # Class images come from the base model: with an IP-Adapter attached, its branch is off.
            neutral = self._ip_adapter.neutral_kwargs() if self._ip_adapter is not None else {}
            data = prepare_training_data(self._pipe, photos, config, call_kwargs=neutral)
        try:
            from diffusers import UNet2DConditionModel

            unet = UNet2DConditionModel.from_pretrained(
                str(self.model_dir), subfolder="unet", local_files_only=True, dtype=torch.float32
            ).to(self.device)
        except Exception as exc:
            raise StageError(
                f"cannot load a training copy of the UNet of {self.name}: {type(exc).__name__}: {exc}",
                code=codes.ADAPTER_TRAINING_FAILED,
            ) from exc
        try:
            return train_unet_lora(unet, data, config, progress=progress, should_stop=should_stop)
        finally:
            del unet
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def close(self) -> None:
        """Drop the pipeline and return cached GPU memory; later ``generate`` calls fail."""
        with self._lock:
            self._pipe = self._img2img = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self) -> DiffusersTextToImage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
