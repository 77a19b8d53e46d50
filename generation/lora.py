"""Per-request use of a trained LoRA adapter on the shared generation pipeline.

The adapter's bytes are parsed and checked against the pipeline's UNet before diffusers sees
them, so an adapter trained for another base model fails with one clear ``ADAPTER_UNREADABLE``
error and leaves the pipeline untouched. :func:`applied_lora` loads it from memory (never a
file), and always removes it again; the caller holds the pipeline's lock for the whole block.

Removal is ``delete_adapters(name)`` and then, once no adapter is left, ``unload_lora_weights``:
deleting alone restores the base output but leaves peft wrapper layers in every targeted
module (slower forwards, and a changed module tree); unloading alone would also drop adapters
that someone else loaded. Together the pipeline ends up bit-identical to the base.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from consentry.policies import codes
from consentry.policies.errors import ConsentryError, StageError

_DOWN, _UP = ".lora.down.weight", ".lora.up.weight"
_PREFIX = "unet."


def _unreadable(detail: str) -> StageError:
    return StageError(f"the LoRA adapter does not fit this model: {detail}", code=codes.ADAPTER_UNREADABLE)


def _linear_shape(unet: torch.nn.Module, modules: dict[str, torch.nn.Module], name: str) -> tuple[int, int]:
    module = modules.get(name)
    # A module another adapter already wraps keeps the original layer as ``base_layer``.
    module = getattr(module, "base_layer", module)
    if not isinstance(module, torch.nn.Linear):
        what = "no such module" if module is None else f"a {type(module).__name__}, not a Linear layer"
        raise _unreadable(f"{name!r} is {what} in {type(unet).__name__}")
    return module.in_features, module.out_features


def parse_lora_weights(weights: bytes, unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Decode safetensors ``weights`` and check them against ``unet``.

    Keys may carry the ``unet.`` prefix or not; every key must be a diffusers-format LoRA key
    (``<module>.lora.down.weight`` [rank, in] / ``<module>.lora.up.weight`` [out, rank]) of a
    Linear module of ``unet``, in complete, finite, floating-point pairs. Returns the state dict
    with the ``unet.`` prefix ``pipe.load_lora_weights`` routes on.
    """
    from safetensors.torch import load

    if not isinstance(weights, bytes | bytearray) or not weights:
        raise _unreadable("expected non-empty safetensors bytes")
    try:
        state = load(bytes(weights))
    except Exception as exc:  # SafetensorError, or a header that is not JSON
        raise StageError(
            f"the LoRA adapter is not readable safetensors: {exc}", code=codes.ADAPTER_UNREADABLE
        ) from exc
    if not state:
        raise _unreadable("it holds no tensors")
    modules = dict(unet.named_modules())
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        bare = key.removeprefix(_PREFIX)
        suffix = _DOWN if bare.endswith(_DOWN) else _UP if bare.endswith(_UP) else None
        if suffix is None:
            raise _unreadable(f"{key!r} is not a diffusers LoRA key (…{_DOWN} or …{_UP})")
        if not tensor.is_floating_point() or tensor.dim() != 2 or not bool(torch.isfinite(tensor).all()):
            raise _unreadable(f"{key!r} is not a finite floating-point matrix")
        pairs.setdefault(bare.removesuffix(suffix), {})[suffix] = tensor
    result: dict[str, torch.Tensor] = {}
    for name, pair in pairs.items():
        in_features, out_features = _linear_shape(unet, modules, name)
        if len(pair) != 2:
            raise _unreadable(f"{name!r} has only one of its down/up matrices")
        down, up = pair[_DOWN], pair[_UP]
        rank = down.shape[0]
        if rank < 1 or tuple(down.shape) != (rank, in_features) or tuple(up.shape) != (out_features, rank):
            raise _unreadable(
                f"{name!r} has down {tuple(down.shape)} and up {tuple(up.shape)}, this model needs "
                f"(r, {in_features}) and ({out_features}, r)"
            )
        result[_PREFIX + name + _DOWN] = down
        result[_PREFIX + name + _UP] = up
    return result


@dataclass
class LoraTiming:
    """Wall times of one :func:`applied_lora`; ``unload_ms`` is set when the block exits."""

    load_ms: float = 0.0
    unload_ms: float | None = None


def _adapters(pipe: Any) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


def _remove(pipe: Any, adapter_name: str) -> None:
    if adapter_name in _adapters(pipe):
        pipe.delete_adapters(adapter_name)
    if not _adapters(pipe):
        # Also after a half-done load, which can leave wrappers of an adapter that is not listed.
        pipe.unload_lora_weights()


@contextmanager
def applied_lora(pipe: Any, weights: bytes, adapter_name: str) -> Iterator[LoraTiming]:
    """Load the adapter into ``pipe`` (active), yield its timing, and always remove it again.

    A bad adapter raises ``ADAPTER_UNREADABLE`` before the pipeline is changed; any other load
    or unload failure raises ``GENERATION_FAILED``. If unloading fails the pipeline may still
    carry the adapter, and the caller should reload it before the next request.
    """
    timing = LoraTiming()
    started = time.perf_counter()
    # peft keeps each adapter under its name in ModuleDicts: a dot, or a Module attribute such
    # as "half" or "train", breaks the injection half-way with an obscure KeyError.
    if (
        not isinstance(adapter_name, str)
        or not adapter_name
        or "." in adapter_name
        or hasattr(torch.nn.ModuleDict, adapter_name)
    ):
        raise StageError(f"{adapter_name!r} cannot name an adapter", code=codes.GENERATION_FAILED)
    state = parse_lora_weights(weights, pipe.unet)
    if adapter_name in _adapters(pipe):
        # Loading would fail, and the cleanup below would then delete the other owner's adapter.
        raise StageError(f"an adapter named {adapter_name!r} is already loaded", code=codes.GENERATION_FAILED)
    try:
        pipe.load_lora_weights(state, adapter_name=adapter_name)
    except Exception as exc:
        try:
            _remove(pipe, adapter_name)
        except Exception as cleanup:
            exc.add_note(f"removing the half-loaded adapter failed too: {cleanup!r}")
        # diffusers reports an unusable state dict with ValueError/KeyError; the rest is torch.
        code = codes.ADAPTER_UNREADABLE if isinstance(exc, ValueError | KeyError) else codes.GENERATION_FAILED
        raise StageError(f"loading the LoRA adapter failed: {type(exc).__name__}: {exc}", code=code) from exc
    timing.load_ms = (time.perf_counter() - started) * 1000.0
    try:
        yield timing
    finally:
        started = time.perf_counter()
        try:
            _remove(pipe, adapter_name)
        except ConsentryError:
            raise
        except Exception as exc:
            raise StageError(
                f"unloading the LoRA adapter {adapter_name!r} failed; reload the pipeline: "
                f"{type(exc).__name__}: {exc}",
                code=codes.GENERATION_FAILED,
            ) from exc
        timing.unload_ms = (time.perf_counter() - started) * 1000.0
