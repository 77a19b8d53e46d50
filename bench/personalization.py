"""Personalization costs: LoRA adapter training, per-request adapter load/unload, img2img.

Two pipelines, both through the production loader (``DiffusersTextToImage(dir, device="cpu")``):

- the project's tiny untrained pipeline (``generation/tiny.py``), and
- a Stable-Diffusion-1.5-ARCHITECTURE pipeline with RANDOM weights (``bench/sd15_random.py``:
  SD-1.5's UNet, VAE, 12-layer CLIP text encoder and PNDM schedule, the tiny tokenizer), saved
  with ``save_pretrained`` to a folder under /tmp (built in a subprocess, so its build peak is
  not counted in this process's memory figures). Its images are noise; its timings are the
  architecture's.

Measured, per pipeline:

1. Adapter training: the two phases of ``DiffusersTextToImage.train_adapter`` called one by one
   (``prepare_training_data`` under the pipeline's lock, the fp32 UNet copy, ``train_unet_lora``)
   so each is timed; per step from the progress callback, the first step (which also injects the
   LoRA layers and warms up) reported apart from the median of the others; peak memory both as
   ``TrainedAdapter.peak_memory_bytes`` (growth of ru_maxrss) and as sampled RSS (every 10 ms),
   split into anonymous (allocated) and file-backed (mmap'd weight pages) parts.
2. ``applied_lora`` load and unload of the trained rank-4 adapter (median of several cycles, after
   one warm-up cycle) against one generation request carrying that adapter. The SD-1.5 request is
   512x512, guidance 7.5, 20 steps; when fewer steps are run (default 4: one 512² UNet call takes
   ~30 s on this 2-core CPU) the time is extrapolated linearly per UNet evaluation, which a
   forward hook on the UNet counts and times; the JSON and the table say so.
3. img2img against txt2img at the same size and steps (img2img runs int(steps * strength) steps;
   PNDM adds one evaluation to both), interleaved; wall ratio and per-UNet-evaluation ratio.
4. That the img2img view holds no weights of its own: unique parameter/buffer storages across
   both pipelines, and the process RSS before and after creating another ``from_pipe`` view.

Absolute CPU times are indicative only (shared 2-core machine; see the load averages); the
ratios are taken within one run.

Run: .venv/bin/python bench/personalization.py [--sd15-dir /tmp/consentry-sd15-random]
     [--sd15-gen-steps 4] [--skip-sd15]
Writes bench/results/personalization.{json,md}. About 10-11 minutes here (2 cores).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import (
    faces_dir,
    goal,
    goal_text,
    machine_info,
    md_table,
    measure_interleaved,
    one_person_photos,
    repo_on_path,
)
from common import write_results as write_results_files
from PIL import Image

GOAL_LORA_PERCENT = 5.0
MIB = 1024 * 1024
PROMPT = "a studio portrait photo of sks person"


# ----------------------------------------------------------------------------------- helpers


def rss_parts() -> tuple[int, int]:
    """(anonymous, file-backed + shared) resident bytes now, from ``/proc/self/statm``.

    On the CPU diffusers maps the safetensors files and pages weights in lazily: they count as
    file-backed RSS, and a second model loaded from the same file (the training UNet copy) is
    counted again although both share one page cache. Anonymous RSS is what the process allocates.
    """
    with open("/proc/self/statm") as f:
        fields = f.read().split()
    page = os.sysconf("SC_PAGE_SIZE")
    resident, shared = int(fields[1]) * page, int(fields[2]) * page
    return resident - shared, shared


def rss_bytes() -> int:
    """The process's resident set size now."""
    return sum(rss_parts())


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Samples anonymous and file-backed RSS every ``period_s`` in a thread."""

    def __init__(self, period_s: float = 0.01) -> None:
        self.period_s = period_s
        self.samples: list[tuple[float, int, int]] = []  # (time, anonymous, file-backed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), *rss_parts()))
            self._stop.wait(self.period_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter(), *rss_parts()))

    def peak(self, since: float = 0.0, part: str = "total") -> int:
        """Peak total, ``anon`` or ``file`` RSS of the samples from ``since`` on."""
        pick = {"total": lambda a, f: a + f, "anon": lambda a, f: a, "file": lambda a, f: f}[part]
        return max((pick(a, f) for t, a, f in self.samples if since <= t), default=0)


class UnetClock:
    """Counts and times every forward call of a UNet (forward pre/post hooks)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.calls_ms: list[float] = []
        self._start = 0.0
        self._handles = [
            unet.register_forward_pre_hook(self._pre),
            unet.register_forward_hook(self._post),
        ]

    def _pre(self, *_: object) -> None:
        self._start = time.perf_counter()

    def _post(self, *_: object) -> None:
        self.calls_ms.append((time.perf_counter() - self._start) * 1000.0)

    def reset(self) -> None:
        self.calls_ms = []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def rounded(value: float, digits: int = 2) -> float:
    return round(float(value), digits)


def versions() -> dict[str, str]:
    import diffusers
    import peft
    import safetensors
    import transformers

    return {
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
        "torch": torch.__version__,
    }


def load_images(paths: list[Path]) -> list[Image.Image]:
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


# ---------------------------------------------------------------------------------- sections


def train_section(backend: Any, photos: list[Image.Image], config: Any) -> tuple[dict[str, Any], bytes]:
    """``train_adapter``'s phases one by one, timed; returns the figures and the adapter bytes."""
    from diffusers import UNet2DConditionModel

    from consentry.generation.lora_training import prepare_training_data, train_unet_lora

    gc.collect()
    (anon0, file0), maxrss0 = rss_parts(), max_rss_bytes()
    rss0 = anon0 + file0
    marks: list[tuple[float, float]] = []

    def progress(step: int, total: int, loss: float) -> None:
        marks.append((time.perf_counter(), loss))

    with RssSampler() as sampler:
        t0 = time.perf_counter()
        with backend._lock:  # as train_adapter: the shared pipeline only for this phase
            data = prepare_training_data(backend._pipe, photos, config)
        t1 = time.perf_counter()
        unet = UNet2DConditionModel.from_pretrained(
            str(backend.model_dir), subfolder="unet", local_files_only=True, dtype=torch.float32
        ).to(backend.device)
        t2 = time.perf_counter()
        anon_train, file_train = rss_parts()
        rss_before_train = anon_train + file_train
        adapter = train_unet_lora(unet, data, config, progress=progress)
        t3 = time.perf_counter()
    del unet
    gc.collect()
    ends = [t for t, _ in marks]
    step_ms = [(b - a) * 1000.0 for a, b in zip([t2, *ends[:-1]], ends, strict=True)]
    later = step_ms[1:]
    figures = {
        "config": {
            "steps": config.steps,
            "rank": config.rank,
            "prior_images": config.prior_images,
            "class_inference_steps": config.class_inference_steps,
            "resolution": data.resolution,
            "batch_size": config.batch_size,
            "photos": len(photos),
            "unet_batch_per_step": config.batch_size * (2 if config.prior_images else 1),
        },
        "prepare_data_ms": rounded((t1 - t0) * 1000.0),
        "load_unet_copy_ms": rounded((t2 - t1) * 1000.0),
        "train_unet_lora_ms": rounded((t3 - t2) * 1000.0),
        "trained_adapter_elapsed_ms": rounded(adapter.elapsed_ms),
        "step_ms": [rounded(v) for v in step_ms],
        "first_step_ms": rounded(step_ms[0]),
        "first_step_note": "includes injecting the LoRA layers, the optimizer set-up and warm-up",
        "later_steps_median_ms": rounded(statistics.median(later)) if later else None,
        "later_steps_mean_ms": rounded(statistics.fmean(later)) if later else None,
        "later_steps": len(later),
        "save_adapter_ms": rounded((t3 - ends[-1]) * 1000.0),
        "losses": [round(loss, 5) for _, loss in marks],
        "adapter_bytes": len(adapter.weights),
        "peak_memory_bytes_reported": adapter.peak_memory_bytes,
        "peak_memory_reported_note": (
            "TrainedAdapter.peak_memory_bytes on the CPU: growth of the process's ru_maxrss during "
            "train_unet_lora (0 when an earlier peak was higher)"
        ),
        "rss_before_bytes": rss0,
        "ru_maxrss_before_bytes": maxrss0,
        "rss_sampled_peak_bytes": sampler.peak(),
        "rss_sampled_growth_whole_bytes": sampler.peak() - rss0,
        "rss_sampled_growth_train_unet_lora_bytes": sampler.peak(t2) - rss_before_train,
        "anon_rss_growth_whole_bytes": sampler.peak(part="anon") - anon0,
        "file_rss_growth_whole_bytes": sampler.peak(part="file") - file0,
        "anon_rss_growth_train_unet_lora_bytes": sampler.peak(t2, "anon") - anon_train,
        "file_rss_growth_train_unet_lora_bytes": sampler.peak(t2, "file") - file_train,
        "rss_sampled_note": (
            "RSS sampled every 10 ms; 'whole' = peak during all three phases minus the RSS before "
            "(includes the fp32 UNet copy); 'train_unet_lora' = peak during training minus the RSS "
            "just before it. Split: anon = memory the process allocates (LoRA layers, activations, "
            "gradients, optimizer); file = weight pages of the mmap'd safetensors paged in (the "
            "pipeline's own weights are loaded lazily, and the UNet copy maps the same file: RSS "
            "counts those pages again, physically they are one page cache)"
        ),
    }
    return figures, adapter.weights


def lora_section(backend: Any, weights: bytes, cycles: int) -> dict[str, Any]:
    """``applied_lora`` load + unload, one warm-up cycle, then ``cycles`` measured."""
    from safetensors.torch import load

    from consentry.generation.lora import applied_lora

    pipe = backend._pipe
    params_before = sum(p.numel() for p in pipe.unet.parameters())
    loads: list[float] = []
    unloads: list[float] = []
    for i in range(cycles + 1):
        with applied_lora(pipe, weights, adapter_name=f"bench_{i}") as timing:
            pass
        if i:  # cycle 0 is the warm-up
            loads.append(timing.load_ms)
            unloads.append(timing.unload_ms or 0.0)
    params_after = sum(p.numel() for p in pipe.unet.parameters())
    state = load(weights)
    load_med, unload_med = statistics.median(loads), statistics.median(unloads)
    return {
        "cycles": cycles,
        "warmup_cycles": 1,
        "rank": int(next(t.shape[0] for k, t in state.items() if k.endswith(".lora.down.weight"))),
        "lora_modules": len(state) // 2,
        "adapter_bytes": len(weights),
        "load_ms": [rounded(v, 3) for v in loads],
        "unload_ms": [rounded(v, 3) for v in unloads],
        "load_median_ms": rounded(load_med, 3),
        "unload_median_ms": rounded(unload_med, 3),
        "load_plus_unload_median_ms": rounded(load_med + unload_med, 3),
        "unet_parameters_unchanged_after": params_before == params_after,
    }


def run_job(backend: Any, clock: UnetClock, job: Any) -> dict[str, Any]:
    clock.reset()
    started = time.perf_counter()
    output = backend.generate(job)
    wall = (time.perf_counter() - started) * 1000.0
    calls = list(clock.calls_ms)
    return {
        "wall_ms": rounded(wall),
        "elapsed_ms": rounded(output.elapsed_ms),
        "unet_calls": len(calls),
        "unet_total_ms": rounded(sum(calls)),
        "unet_call_median_ms": rounded(statistics.median(calls)) if calls else None,
        "unet_call_ms": [rounded(v) for v in calls],
        "other_ms": rounded(wall - sum(calls)),
    }


def scheduler_evaluations(backend: Any, steps: int) -> int:
    """UNet evaluations a txt2img run of ``steps`` makes with the pipeline's scheduler."""
    scheduler = type(backend._pipe.scheduler).from_config(backend._pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def generation_section(
    backend: Any,
    clock: UnetClock,
    weights: bytes,
    lora: dict[str, Any],
    *,
    size: int,
    steps: int,
    target: int,
) -> dict[str, Any]:
    """One request with the adapter; extrapolated to ``target`` steps per UNet evaluation."""
    from consentry.generation.base import AdapterWeights, GenerationJob

    job = GenerationJob(
        prompt=PROMPT,
        seed=7,
        steps=steps,
        width=size,
        height=size,
        guidance_scale=7.5,
        adapter=AdapterWeights("bench", weights),
    )
    run = run_job(backend, clock, job)
    target_calls = scheduler_evaluations(backend, target)
    per_call = run["unet_call_median_ms"]
    extrapolated = steps != target
    generation_ms = run["wall_ms"] + (target_calls - run["unet_calls"]) * per_call
    lu = lora["load_plus_unload_median_ms"]
    # The request's wall time includes its own adapter load + unload; compare against the rest.
    generation_without_lora_ms = generation_ms - lu
    percent = 100.0 * lu / generation_without_lora_ms
    return {
        "request": {
            "width": size,
            "height": size,
            "steps": target,
            "guidance_scale": 7.5,
            "with_adapter": True,
            "unet_evaluations": target_calls,
        },
        "measured_steps": steps,
        "measured": run,
        "extrapolated": extrapolated,
        "extrapolation": (
            f"measured {steps} steps ({run['unet_calls']} UNet evaluations); {target} steps = measured "
            f"wall + ({target_calls} - {run['unet_calls']}) x median UNet evaluation ({per_call} ms), "
            "linear per evaluation (text encoding, VAE decode and adapter load/unload counted once)"
            if extrapolated
            else "not extrapolated: the full request was run"
        ),
        "generation_ms": rounded(generation_ms),
        "generation_without_lora_ms": rounded(generation_without_lora_ms),
        "load_plus_unload_ms": lu,
        "load_plus_unload_percent": round(percent, 4),
        "goal": goal(round(percent, 4), GOAL_LORA_PERCENT, at_most=True),
    }


def modes_section(
    backend: Any,
    clock: UnetClock,
    reference: Image.Image,
    *,
    size: int,
    steps: int,
    strength: float,
    repeats: int,
    warmup: int,
) -> dict[str, Any]:
    """txt2img and img2img at the same size/steps, interleaved round-robin."""
    from consentry.generation.base import GenerationJob, GenerationMode

    common_args: dict[str, Any] = {
        "prompt": PROMPT,
        "seed": 3,
        "steps": steps,
        "width": size,
        "height": size,
        "guidance_scale": 7.5,
    }
    jobs = {
        "txt2img": GenerationJob(**common_args, mode=GenerationMode.txt2img),
        "img2img": GenerationJob(
            **common_args, mode=GenerationMode.img2img, strength=strength, references=(reference,)
        ),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in jobs}

    def runner(name: str) -> Callable[[int], object]:
        def fn(i: int) -> None:
            result = run_job(backend, clock, jobs[name])
            if i >= 0:
                runs[name].append(result)

        return fn

    timings = measure_interleaved({name: runner(name) for name in jobs}, repeats=repeats, warmup=warmup)
    out: dict[str, Any] = {
        "size": size,
        "steps": steps,
        "strength": strength,
        "img2img_nominal_steps": int(steps * strength),
        "guidance_scale": 7.5,
        "repeats": repeats,
        "warmup": warmup,
    }
    for name in jobs:
        calls = runs[name][0]["unet_calls"]
        per_call = [c for r in runs[name] for c in r["unet_call_ms"]]
        out[name] = {
            **timings[name].summary(),
            "unet_calls": calls,
            "unet_call_median_ms": rounded(statistics.median(per_call)),
            "other_median_ms": rounded(statistics.median(r["other_ms"] for r in runs[name])),
            "runs": runs[name],
        }
    txt, img = out["txt2img"], out["img2img"]
    nominal_txt, nominal_img = steps, int(steps * strength)
    out["wall_ratio_img2img_over_txt2img"] = round(img["median_ms"] / txt["median_ms"], 4)
    out["per_step_ratio_nominal"] = round(
        (img["median_ms"] / nominal_img) / (txt["median_ms"] / nominal_txt), 4
    )
    out["per_unet_evaluation_ratio"] = round(
        (img["median_ms"] / img["unet_calls"]) / (txt["median_ms"] / txt["unet_calls"]), 4
    )
    out["wall_ratio_min"] = round(img["min_ms"] / txt["min_ms"], 4)
    out["per_unet_evaluation_ratio_min"] = round(
        (img["min_ms"] / img["unet_calls"]) / (txt["min_ms"] / txt["unet_calls"]), 4
    )
    out["unet_call_ratio"] = round(img["unet_call_median_ms"] / txt["unet_call_median_ms"], 4)
    out["ratio_notes"] = (
        "per_step_ratio_nominal divides the wall time by steps and int(steps*strength); "
        "*_min use the fastest run of each (least disturbed by other load); "
        "per_unet_evaluation_ratio by the UNet calls counted (PNDM makes one more than the nominal "
        "steps in both modes, DDIM exactly the nominal); unet_call_ratio compares the UNet calls "
        "alone; img2img's extra fixed cost is the VAE encode of the reference"
    )
    return out


def storages(pipe: Any) -> dict[int, int]:
    """Unique tensor storages (data pointer -> bytes) of every torch module of a pipeline."""
    found: dict[int, int] = {}
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in [*component.parameters(), *component.buffers()]:
                storage = tensor.untyped_storage()
                found[storage.data_ptr()] = storage.nbytes()
    return found


def memory_section(backend: Any) -> dict[str, Any]:
    """img2img is a view: no storage of its own, and creating another one moves RSS by ~nothing."""
    txt, img = storages(backend._pipe), storages(backend._img2img)
    union = txt | img
    txt_parts = backend._pipe.components
    shared = sorted(
        name
        for name, part in backend._img2img.components.items()
        if isinstance(part, torch.nn.Module) and txt_parts.get(name) is part
    )
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    fresh = backend._image_to_image()
    create_ms = (time.perf_counter() - started) * 1000.0
    gc.collect()
    after = rss_bytes()
    fresh_extra = sum(n for ptr, n in storages(fresh).items() if ptr not in txt)
    del fresh
    gc.collect()
    return {
        "img2img_class": type(backend._img2img).__name__,
        "txt2img_unique_storages": len(txt),
        "txt2img_weight_bytes": sum(txt.values()),
        "img2img_unique_storages": len(img),
        "union_unique_storages": len(union),
        "union_weight_bytes": sum(union.values()),
        "img2img_extra_weight_bytes": sum(union.values()) - sum(txt.values()),
        "modules_shared_by_identity": shared,
        "new_from_pipe_view": {
            "create_ms": rounded(create_ms, 3),
            "rss_before_bytes": before,
            "rss_after_bytes": after,
            "rss_delta_bytes": after - before,
            "extra_weight_bytes": fresh_extra,
        },
        "note": (
            "backend._img2img is made in the constructor; the RSS delta is for one more "
            "identical from_pipe view (backend._image_to_image()), created and dropped here"
        ),
    }


def pipeline_block(
    label: str,
    model_dir: Path,
    photos: list[Image.Image],
    reference: Image.Image,
    *,
    train: Any,
    gen_size: int,
    gen_steps: int,
    gen_target_steps: int,
    mode_size: int,
    mode_steps: int,
    mode_repeats: int,
    lora_cycles: int,
) -> dict[str, Any]:
    from consentry.generation.diffusers_backend import DiffusersTextToImage

    gc.collect()
    rss0 = rss_bytes()
    started = time.perf_counter()
    backend = DiffusersTextToImage(model_dir, device="cpu")
    load_ms = (time.perf_counter() - started) * 1000.0
    block: dict[str, Any] = {
        "label": label,
        "model_dir": str(model_dir),
        "untrained": backend.untrained,
        "pipeline_class": type(backend._pipe).__name__,
        "scheduler": type(backend._pipe.scheduler).__name__,
        "parameters": {
            name: sum(p.numel() for p in part.parameters())
            for name, part in backend._pipe.components.items()
            if isinstance(part, torch.nn.Module)
        },
        "backend_load_ms": rounded(load_ms),
        "rss_before_load_bytes": rss0,
        "rss_after_load_bytes": rss_bytes(),
        "rss_after_load_note": "weights are mmap'd and paged in lazily on first use (CPU)",
    }
    print(f"[{label}] loaded in {load_ms / 1000:.1f} s", flush=True)
    block["memory"] = memory_section(backend)
    block["training"], weights = train_section(backend, photos, train)
    print(f"[{label}] trained: steps {block['training']['step_ms']} ms", flush=True)
    block["lora"] = lora_section(backend, weights, lora_cycles)
    clock = UnetClock(backend._pipe.unet)
    try:
        block["generation"] = generation_section(
            backend, clock, weights, block["lora"], size=gen_size, steps=gen_steps, target=gen_target_steps
        )
        print(f"[{label}] generation {block['generation']['measured']['wall_ms']:.0f} ms", flush=True)
        block["modes"] = modes_section(
            backend,
            clock,
            reference,
            size=mode_size,
            steps=mode_steps,
            strength=0.6,
            repeats=mode_repeats,
            warmup=1,
        )
    finally:
        clock.remove()
        backend.close()
    del backend
    gc.collect()
    return block


# ---------------------------------------------------------------------------------- reporting


def markdown(data: dict[str, Any]) -> str:
    blocks = [b for b in (data.get("tiny"), data.get("sd15")) if b]
    names = {"tiny": "tiny (untrained)", "sd15": "SD-1.5 arch (RANDOM weights)"}
    headers = ["measure", *(names[key] for key in ("tiny", "sd15") if data.get(key))]

    def row(title: str, fn: Callable[[dict[str, Any]], object]) -> list[object]:
        return [title, *(fn(b) for b in blocks)]

    def gen_text(b: dict[str, Any]) -> str:
        g = b["generation"]
        r = g["request"]
        extra = f", extrapolated from {g['measured_steps']} steps" if g["extrapolated"] else ""
        return f"{g['generation_ms'] / 1000:.1f} s ({r['width']}², {r['steps']} steps, cfg 7.5{extra})"

    def modes_text(b: dict[str, Any]) -> str:
        m = b["modes"]
        return (
            f"{m['txt2img']['median_ms'] / 1000:.2f} s / {m['img2img']['median_ms'] / 1000:.2f} s "
            f"({m['size']}², {m['steps']} steps, img2img {m['img2img_nominal_steps']}; "
            f"UNet calls {m['txt2img']['unet_calls']} / {m['img2img']['unet_calls']})"
        )

    def train_cfg(b: dict[str, Any]) -> str:
        c = b["training"]["config"]
        return (
            f"{c['steps']} steps at {c['resolution']} px, rank {c['rank']}, "
            f"{c['prior_images']} prior image ({c['class_inference_steps']} steps), UNet batch "
            f"{c['unet_batch_per_step']}"
        )

    rows = [
        row("training settings", train_cfg),
        row("train: first step (ms)", lambda b: f"{b['training']['first_step_ms']:.0f}"),
        row(
            "train: later steps, median (ms)",
            lambda b: f"{b['training']['later_steps_median_ms']:.0f} (n={b['training']['later_steps']})",
        ),
        row(
            "train: prepare data / UNet copy (ms)",
            lambda b: f"{b['training']['prepare_data_ms']:.0f} / {b['training']['load_unet_copy_ms']:.0f}",
        ),
        row(
            "train: peak RSS growth, whole / train_unet_lora (MiB)",
            lambda b: (
                f"{b['training']['rss_sampled_growth_whole_bytes'] / MIB:.0f} / "
                f"{b['training']['rss_sampled_growth_train_unet_lora_bytes'] / MIB:.0f}"
            ),
        ),
        row(
            "train_unet_lora peak RSS growth: anon / file-backed (MiB)",
            lambda b: (
                f"{b['training']['anon_rss_growth_train_unet_lora_bytes'] / MIB:.0f} / "
                f"{b['training']['file_rss_growth_train_unet_lora_bytes'] / MIB:.0f}"
            ),
        ),
        row(
            "train: peak_memory_bytes reported (MiB)",
            lambda b: f"{b['training']['peak_memory_bytes_reported'] / MIB:.0f}",
        ),
        row(
            "LoRA load / unload, median (ms)",
            lambda b: (
                f"{b['lora']['load_median_ms']:.1f} / {b['lora']['unload_median_ms']:.1f} "
                f"(rank {b['lora']['rank']}, {b['lora']['lora_modules']} modules, n={b['lora']['cycles']})"
            ),
        ),
        row("generation with adapter", gen_text),
        row(
            f"load+unload / generation (goal <= {GOAL_LORA_PERCENT:g}%)",
            lambda b: (
                f"{b['generation']['load_plus_unload_percent']:.3g}% "
                f"({'met' if b['generation']['goal']['met'] else 'NOT met'})"
            ),
        ),
        row("txt2img / img2img wall, median", modes_text),
        row(
            "img2img / txt2img wall ratio: median; min",
            lambda b: f"{b['modes']['wall_ratio_img2img_over_txt2img']}; {b['modes']['wall_ratio_min']}",
        ),
        row(
            "img2img / txt2img per step: nominal / per UNet call (median; per UNet call, min)",
            lambda b: (
                f"{b['modes']['per_step_ratio_nominal']} / {b['modes']['per_unet_evaluation_ratio']}; "
                f"{b['modes']['per_unet_evaluation_ratio_min']}"
            ),
        ),
        row(
            "img2img extra weight bytes (unique storages)",
            lambda b: (
                f"{b['memory']['img2img_extra_weight_bytes']} of "
                f"{b['memory']['union_weight_bytes'] / MIB:.0f} MiB"
            ),
        ),
        row(
            "RSS change creating an img2img view (MiB)",
            lambda b: f"{b['memory']['new_from_pipe_view']['rss_delta_bytes'] / MIB:+.2f}",
        ),
    ]
    title = "# Personalization: adapter training, per-request LoRA, img2img"
    lines = [title, "", md_table(headers, rows), ""]
    if data.get("tiny") and data.get("sd15"):
        step_ratio = data["ratios"]["train_step_sd15_over_tiny"]
        lines.append(f"Training per step (later steps), SD-1.5 arch / tiny: **{step_ratio}x**.")
    for b in blocks:
        lines.append(f"{b['label']}: {goal_text(b['generation']['goal'], '%')} (load+unload vs generation).")
        if b["generation"]["extrapolated"]:
            lines.append(f"{b['label']} generation EXTRAPOLATED: {b['generation']['extrapolation']}.")
    lines += [
        "",
        "Absolute CPU times are indicative only (shared 2-core CPU, load averages below); the ratios "
        "are within one run. The SD-1.5-architecture pipeline has RANDOM weights (outputs are noise); "
        "the tiny pipeline is untrained. SD-1.5 img2img/txt2img uses a smaller size and fewer steps "
        "than 512²/20 (see the row). PNDM makes steps+1 UNet calls.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- main


def build_sd15(directory: Path) -> dict[str, Any]:
    """Build (in a subprocess, so its peak memory stays out of this process) unless present."""
    from sd15_random import ensure_built

    return ensure_built("sd15_random.py", directory)


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--sd15-dir", type=Path, default=None, help="reuse/keep the SD-1.5 build here")
    parser.add_argument("--sd15-gen-steps", type=int, default=4, help="steps at 512² (20: no extrapolation)")
    parser.add_argument("--sd15-train-steps", type=int, default=3)
    parser.add_argument("--sd15-mode-size", type=int, default=256)
    parser.add_argument("--sd15-mode-steps", type=int, default=5)
    parser.add_argument("--tiny-train-steps", type=int, default=20)
    parser.add_argument("--skip-sd15", action="store_true")
    args = parser.parse_args()
    repo_on_path()
    import diffusers
    import transformers

    # The adapter has no text-encoder keys: diffusers says so on every load; progress bars too.
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    from consentry.generation.lora_training import LoraTrainingConfig
    from consentry.generation.tiny import build_tiny_pipeline

    started = time.perf_counter()
    data: dict[str, Any] = {"machine": machine_info(), "versions": versions()}
    photo_paths, reference_path = one_person_photos(faces_dir(), 3)
    photos = load_images(photo_paths)
    reference = load_images([reference_path])[0]
    data["photos"] = {"training": [p.name for p in photo_paths], "img2img_reference": reference_path.name}
    work = Path(tempfile.mkdtemp(prefix="consentry-bench-personalization-"))
    try:
        tiny_dir = build_tiny_pipeline(work / "tiny", seed=0)
        data["tiny"] = pipeline_block(
            "tiny",
            tiny_dir,
            photos,
            reference,
            train=LoraTrainingConfig(
                steps=args.tiny_train_steps, rank=4, prior_images=1, class_inference_steps=2
            ),
            gen_size=256,
            gen_steps=20,
            gen_target_steps=20,
            mode_size=256,
            mode_steps=20,
            mode_repeats=5,
            lora_cycles=9,
        )
        if not args.skip_sd15:
            sd15_dir = (args.sd15_dir or work / "sd15-random").resolve()
            data["sd15_build"] = build_sd15(sd15_dir)
            data["sd15"] = pipeline_block(
                "SD-1.5 arch (random weights)",
                sd15_dir,
                photos,
                reference,
                train=LoraTrainingConfig(
                    steps=args.sd15_train_steps,
                    rank=4,
                    prior_images=1,
                    class_inference_steps=2,
                    resolution=256,
                ),
                gen_size=512,
                gen_steps=args.sd15_gen_steps,
                gen_target_steps=20,
                mode_size=args.sd15_mode_size,
                mode_steps=args.sd15_mode_steps,
                mode_repeats=4,
                lora_cycles=7,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if data.get("tiny") and data.get("sd15"):
        sd15_step = data["sd15"]["training"]["later_steps_median_ms"]
        tiny_step = data["tiny"]["training"]["later_steps_median_ms"]
        data["ratios"] = {
            "train_step_sd15_over_tiny": round(sd15_step / tiny_step, 1),
            "sd15_load_plus_unload_percent": data["sd15"]["generation"]["load_plus_unload_percent"],
            "tiny_load_plus_unload_percent": data["tiny"]["generation"]["load_plus_unload_percent"],
            "sd15_img2img_over_txt2img_wall": data["sd15"]["modes"]["wall_ratio_img2img_over_txt2img"],
            "sd15_img2img_over_txt2img_per_unet_call": data["sd15"]["modes"]["per_unet_evaluation_ratio"],
            "sd15_img2img_over_txt2img_wall_min": data["sd15"]["modes"]["wall_ratio_min"],
            "tiny_img2img_over_txt2img_wall": data["tiny"]["modes"]["wall_ratio_img2img_over_txt2img"],
            "tiny_img2img_over_txt2img_per_step": data["tiny"]["modes"]["per_step_ratio_nominal"],
        }
    data["caveats"] = [
        "absolute CPU times are indicative only: shared 2-core machine, see the load averages",
        "SD-1.5-architecture pipeline has RANDOM weights; tiny pipeline is untrained: outputs are noise",
        "text encoder vocabulary is the tiny tokenizer's (534), not CLIP's 49,408",
        "CPU weights are mmap'd: file-backed RSS double-counts the training UNet copy's pages, "
        "which share the page cache with the serving UNet; anon RSS is the allocated memory",
    ]
    data["bench_wall_s"] = rounded(time.perf_counter() - started, 1)
    text = markdown(data)
    json_path, md_path = write_results_files("personalization", data, text)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path} ({data['bench_wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
