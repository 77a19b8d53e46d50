"""Gate overhead: everything the WHOLE gate does around one generation, against the generation.

The real gate (``consentry.gateway.wiring.open_gate(settings)``: SQLite audit log and records,
the default dlib ResNet embedder with MTCNN detection, watermarking, C2PA signing, release) in
front of a local diffusers pipeline folder (``model_dir``), in one run, for two pipelines with
RANDOM weights built from configs into a temporary folder (subprocess builds, deleted afterwards
unless ``--keep``):

(a) SD-1.5 architecture (``bench/sd15_random.py``): 512², guidance 7.5, PNDM. The goal is a
    20-step request; on this CPU one 512² UNet evaluation takes seconds, so by default the
    requests run ``--sd15-steps`` (2) steps and the generate stage is EXTRAPOLATED linearly per
    UNet evaluation to 20 steps (a forward hook counts and times every UNet call; text encoding
    and VAE decode counted once). ``--sd15-steps 20`` runs it for real (~2.5 min a request).
(b) SD-Turbo architecture (``bench/sdturbo_random.py``, SD 2.1 layout): 512², 1 step, guidance
    0, Euler "trailing": measured as is.

Per pipeline: a named subject (3 LFW photos of one person enrolled, a requester granted
``portrait``) asked for with a 4th photo of that person as reference, and a request naming
nobody (no reference), ``num_images=1``. After model loading (``gate.warm()``) and one warm-up
request of each kind, ``--repeats`` requests of each kind are timed, alternating. Reported per
request kind (medians): each stage's ``elapsed_ms`` from ``Release.decision``, the sum of the
stages other than ``generate``, and the time ``gate.generate`` spends outside the stages
(its wall minus the sum of the stages: rate limit, subject look-up, upload decoding, job
building, admission, metrics, the Release), of which decoding, the subject look-up and the rate
limiter are timed by wrapping those calls on the gate instance (probes, no package change); the
face analyzer's share of ``verify_refs`` / ``verify_output`` likewise.

The outputs are noise: ``verify_output`` runs detection on a faceless image (the subject's output
check finds no face and allows, ``require_output_face`` being off). Goals: gate overhead (all but
generation) <= 1 % of a 20-step 512² SD-1.5 generation on CPU; <= 10 % of a 1-step generation
on GPU, not measurable here (no CUDA device): the CPU 1-step ratio is reported instead.

On a GPU (``--device cuda``, run by bench/gpu_check.sh with ``--skip-sd15``) the whole gate runs
there (detection, embedding, the batched watermark, fp16 generation) and the SD-Turbo goal is
evaluated; UNet calls are then timed with ``torch.cuda.synchronize`` in the hooks. Results go to
``gate_overhead_gpu.{json,md}`` so the CPU figures are kept. ``--smoke`` runs the project's tiny
pipeline (256², 1 step) once instead: it proves the script runs and writes
``gate_overhead_smoke.{json,md}``, no figure.

Run: .venv/bin/python bench/gate_overhead.py [--sd15-steps 2] [--repeats 3] [--keep]
     [--work DIR] [--results-dir DIR] [--device cpu|cuda] [--skip-sd15] [--skip-turbo] [--smoke]
Writes bench/results/gate_overhead.{json,md}. About 15 minutes on 2 (loaded) CPU cores, ~6 GB RAM.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import torch
from common import (
    RESULTS_DIR,
    faces_dir,
    goal,
    goal_text,
    machine_info,
    md_table,
    one_person_photos,
    repo_on_path,
    write_results,
)
from sd15_random import ensure_built

repo_on_path()
from consentry.gateway.flow import STAGES as STAGE_NAMES  # noqa: E402  (every step, as the gate runs them)

GOAL_SD15_PERCENT = 1.0
GOAL_TURBO_GPU_PERCENT = 10.0
PROMPT = "a studio portrait photo, soft light"
OUTSIDE_PROBES = ("decode_uploads", "subject_lookup", "rate_limit")


def rounded(value: float, digits: int = 2) -> float:
    return round(float(value), digits)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def versions() -> dict[str, str]:
    import diffusers
    import facenet_pytorch
    import transformers

    return {
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "facenet_pytorch": getattr(facenet_pytorch, "__version__", "?"),
        "torch": torch.__version__,
    }


# ------------------------------------------------------------------------------ instruments


class UnetClock:
    """Counts and times every forward call of a UNet (forward pre/post hooks; on CUDA the
    queued work is waited for on both sides, else the hooks would time the launches only)."""

    def __init__(self, unet: torch.nn.Module, cuda: bool = False) -> None:
        self.calls_ms: list[float] = []
        self._start = 0.0
        self._sync = torch.cuda.synchronize if cuda else (lambda: None)
        self._handles = [unet.register_forward_pre_hook(self._pre), unet.register_forward_hook(self._post)]

    def _pre(self, *_: object) -> None:
        self._sync()
        self._start = time.perf_counter()

    def _post(self, *_: object) -> None:
        self._sync()
        self.calls_ms.append((time.perf_counter() - self._start) * 1000.0)

    def take(self) -> list[float]:
        calls, self.calls_ms = self.calls_ms, []
        return calls

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class Probes:
    """Wall time of calls ``gate.generate`` makes outside the stages, and of the face analyzer,
    by wrapping them on the instances (attribute assignment: nothing in the package changes).
    ``outside_only`` probes count only calls made while the flow (the stages) is not running:
    the consent stage looks the subject up again, and that call is the stage's."""

    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = {}
        self.in_flow = False

    def take(self) -> dict[str, list[float]]:
        out, self.ms = self.ms, {}
        return out

    def _add(self, name: str, start: float) -> None:
        self.ms.setdefault(name, []).append((time.perf_counter() - start) * 1000.0)

    def mark_flow(self, flow: Any) -> None:
        inner: Callable[..., Awaitable[Any]] = flow.run

        async def run(*args: Any, **kwargs: Any) -> Any:
            self.in_flow = True
            try:
                return await inner(*args, **kwargs)
            finally:
                self.in_flow = False

        flow.run = run

    def wrap_async(self, owner: object, attr: str, name: str, *, outside_only: bool = False) -> None:
        inner: Callable[..., Awaitable[Any]] = getattr(owner, attr)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            if outside_only and self.in_flow:
                return await inner(*args, **kwargs)
            start = time.perf_counter()
            try:
                return await inner(*args, **kwargs)
            finally:
                self._add(name, start)

        setattr(owner, attr, timed)

    def wrap_sync(self, owner: object, attr: str, name: str) -> None:
        inner: Callable[..., Any] = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self._add(name, start)

        setattr(owner, attr, timed)


def scheduler_evaluations(pipe: Any, steps: int, guidance: float) -> int:
    """UNet forward calls a txt2img run of ``steps`` makes (CFG batches both halves in one call)."""
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    del guidance  # one batched call per timestep either way
    return len(scheduler.timesteps)


# ------------------------------------------------------------------------------------ cases


async def run_case(
    label: str,
    model_dir: Path,
    case_dir: Path,
    keys_dir: Path,
    enroll_paths: list[Path],
    reference_path: Path,
    *,
    steps: int,
    target_steps: int,
    guidance: float,
    repeats: int,
    device: str = "cpu",
    image_size: int = 512,
    policy_file: Path | None = None,
) -> dict[str, Any]:
    from consentry.gateway.requests import EnrollmentRequest, GenerationRequest, GrantRequest
    from consentry.gateway.storage.principals import LOCAL_ACTOR
    from consentry.gateway.wiring import open_gate
    from consentry.policies.config import Settings
    from consentry.policies.consent import Purpose

    case_dir.mkdir(parents=True)
    settings = Settings(
        data_dir=case_dir,
        database_url=f"sqlite+aiosqlite:///{case_dir / 'gate.db'}",
        keys_dir=keys_dir,
        output_dir=case_dir / "outputs",
        adapters_dir=case_dir / "adapters",
        model_dir=model_dir,
        device=device,
        image_size=image_size,
        generation_steps=steps,
        guidance_scale=guidance,
        stage_timeout_s=3600.0,
        rate_limit_burst=1000,
        policy_file=policy_file,
    )
    out: dict[str, Any] = {
        "label": label,
        "settings": {
            "image_size": image_size,
            "steps_run": steps,
            "target_steps": target_steps,
            "guidance_scale": guidance,
            "embedder": settings.embedder.value,
            "device": device,
            "database": "sqlite+aiosqlite",
        },
    }
    t0 = time.perf_counter()
    gate = await open_gate(settings)
    out["open_gate_ms"] = rounded((time.perf_counter() - t0) * 1000.0)
    clock: UnetClock | None = None
    try:
        t0 = time.perf_counter()
        await gate.warm()
        out["warm_models_ms"] = rounded((time.perf_counter() - t0) * 1000.0)
        lazy: Any = gate.generator
        backend: Any = lazy.model
        pipe = backend._pipe
        out["pipeline"] = {"class": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__}
        photos = tuple(p.read_bytes() for p in enroll_paths)
        t0 = time.perf_counter()
        identity = await gate.enroll(LOCAL_ACTOR, EnrollmentRequest(label="bench-subject", photos=photos))
        out["enroll_ms"] = rounded((time.perf_counter() - t0) * 1000.0)
        requester = (await gate.create_principal(LOCAL_ACTOR, "bench-requester", "requester")).principal
        await gate.grant(
            LOCAL_ACTOR,
            GrantRequest(
                identity_id=identity.id,
                principal=requester.id,
                purposes=(Purpose.portrait,),
                attested_by="bench",
                consent_text_sha256=hashlib.sha256(b"bench consent").hexdigest(),
            ),
        )
        reference = reference_path.read_bytes()
        requests = {
            "named": GenerationRequest(
                prompt=PROMPT, subject_id=identity.id, purpose=Purpose.portrait, references=(reference,)
            ),
            "nobody": GenerationRequest(prompt=PROMPT),
        }

        probes = Probes()
        probes.mark_flow(gate.parts.flow)
        probes.wrap_async(gate, "_decode", "decode_uploads", outside_only=True)
        probes.wrap_async(gate.subjects, "get", "subject_lookup", outside_only=True)
        probes.wrap_async(gate.parts.rate_limits, "take", "rate_limit", outside_only=True)
        probes.wrap_sync(gate.analyzer, "analyze", "face_analyze")
        # Inside the generate stage: the text encoder and VAE decode (the UNet has its clock).
        probes.wrap_sync(pipe.text_encoder, "forward", "text_encoder")
        probes.wrap_sync(pipe.vae, "decode", "vae_decode")
        clock = UnetClock(pipe.unet, cuda=device == "cuda")

        async def one(kind: str) -> dict[str, Any]:
            probes.take()
            assert clock is not None
            clock.take()
            start = time.perf_counter()
            release = await gate.generate(requester, requests[kind])
            wall = (time.perf_counter() - start) * 1000.0
            decision = release.decision.as_dict()
            stages = {name: float(decision[name]["elapsed_ms"]) for name in STAGE_NAMES}
            probe = probes.take()
            calls = clock.take()
            analyze = probe.get("face_analyze", [])
            # verify_refs analyzes the references (named requests only), verify_output the output.
            refs_analyze = sum(analyze[:-1]) if len(analyze) > 1 else 0.0
            out_analyze = analyze[-1] if analyze else 0.0
            return {
                "wall_ms": wall,
                "stages_ms": stages,
                "stages_sum_ms": sum(stages.values()),
                "non_generation_stages_ms": sum(v for k, v in stages.items() if k != "generate"),
                "outside_stages_ms": wall - sum(stages.values()),
                "probes_ms": {k: sum(v) for k, v in probe.items() if k in OUTSIDE_PROBES},
                "text_encoder_ms": sum(probe.get("text_encoder", [])),
                "vae_decode_ms": sum(probe.get("vae_decode", [])),
                "face_analyze_in_verify_refs_ms": refs_analyze,
                "face_analyze_in_verify_output_ms": out_analyze,
                "face_analyze_calls": len(analyze),
                "unet_calls": len(calls),
                "unet_ms": sum(calls),
                "unet_call_ms": calls,
                "verdicts": {n: decision[n].get("reason") for n in ("verify_refs", "verify_output")},
                "untrained": release.untrained,
            }

        warmup = {kind: await one(kind) for kind in requests}
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in requests}
        for i in range(repeats):
            order = list(requests) if i % 2 == 0 else list(requests)[::-1]
            for kind in order:
                runs[kind].append(await one(kind))
        target_calls = scheduler_evaluations(pipe, target_steps, guidance)
        out["warmup"] = {k: summarize_runs([v], target_calls) for k, v in warmup.items()}
        out["requests"] = {k: summarize_runs(v, target_calls) for k, v in runs.items()}
        out["raw"] = {k: [strip(r) for r in v] for k, v in runs.items()}
        out["unet_evaluations_target"] = target_calls
    finally:
        if clock is not None:
            clock.remove()
        await gate.close()
        gc.collect()
    return out


def strip(run: dict[str, Any]) -> dict[str, Any]:
    return {k: (rounded_tree(v)) for k, v in run.items()}


def rounded_tree(value: Any) -> Any:
    if isinstance(value, float):
        return rounded(value, 3)
    if isinstance(value, dict):
        return {k: rounded_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded_tree(v) for v in value]
    return value


def summarize_runs(runs: list[dict[str, Any]], target_calls: int) -> dict[str, Any]:
    """Medians over the runs; generation extrapolated to ``target_calls`` UNet evaluations."""
    stages = {name: rounded(med([r["stages_ms"][name] for r in runs]), 3) for name in STAGE_NAMES}
    probe_names = sorted({k for r in runs for k in r["probes_ms"]})
    probes = {k: rounded(med([r["probes_ms"].get(k, 0.0) for r in runs]), 3) for k in probe_names}
    outside = med([r["outside_stages_ms"] for r in runs])
    non_gen = med([r["non_generation_stages_ms"] for r in runs])
    overhead = med([r["non_generation_stages_ms"] + r["outside_stages_ms"] for r in runs])
    calls = [c for r in runs for c in r["unet_call_ms"]]
    per_call = med(calls)
    measured_calls = runs[0]["unet_calls"]
    generate = stages["generate"]
    generation_target = generate + (target_calls - measured_calls) * per_call
    extrapolated = target_calls != measured_calls
    return {
        "runs": len(runs),
        "stages_median_ms": stages,
        "stage_samples_ms": {name: [rounded(r["stages_ms"][name], 3) for r in runs] for name in STAGE_NAMES},
        "wall_median_ms": rounded(med([r["wall_ms"] for r in runs]), 3),
        "non_generation_stages_median_ms": rounded(non_gen, 3),
        "outside_stages_median_ms": rounded(outside, 3),
        "outside_probes_median_ms": probes,
        "outside_unprobed_median_ms": rounded(
            med([r["outside_stages_ms"] - sum(r["probes_ms"].values()) for r in runs]), 3
        ),
        "overhead_median_ms": rounded(overhead, 3),
        "face_analyze_in_verify_refs_median_ms": rounded(
            med([r["face_analyze_in_verify_refs_ms"] for r in runs]), 3
        ),
        "face_analyze_in_verify_output_median_ms": rounded(
            med([r["face_analyze_in_verify_output_ms"] for r in runs]), 3
        ),
        "generate_parts_median_ms": {
            "unet": rounded(med([r["unet_ms"] for r in runs]), 3),
            "text_encoder": rounded(med([r["text_encoder_ms"] for r in runs]), 3),
            "vae_decode": rounded(med([r["vae_decode_ms"] for r in runs]), 3),
            "rest": rounded(
                med(
                    [
                        r["stages_ms"]["generate"] - r["unet_ms"] - r["text_encoder_ms"] - r["vae_decode_ms"]
                        for r in runs
                    ]
                ),
                3,
            ),
        },
        "unet_calls_measured": measured_calls,
        "unet_call_median_ms": rounded(per_call, 3),
        "unet_calls_target": target_calls,
        "generate_measured_median_ms": rounded(generate, 3),
        "generation_target_ms": rounded(generation_target, 3),
        "generation_extrapolated": extrapolated,
        "overhead_percent_of_generation": round(100.0 * overhead / generation_target, 4),
        "non_generation_stages_percent_of_generation": round(100.0 * non_gen / generation_target, 4),
        "verdicts": runs[-1]["verdicts"],
    }


# ------------------------------------------------------------------------------------ build


def build(script: str, directory: Path) -> dict[str, Any]:
    """Build a random pipeline in a subprocess unless ``directory`` already holds that build."""
    return ensure_built(script, directory)


def build_tiny(directory: Path) -> dict[str, Any]:
    """The project's own tiny untrained pipeline (256²), for ``--smoke``."""
    from consentry.generation.tiny import build_tiny_pipeline

    build_tiny_pipeline(directory, image_size=256)
    return {"built_by": "consentry.generation.tiny", "built_in_this_run": True, "directory": str(directory)}


# --------------------------------------------------------------------------------- markdown


def markdown(data: dict[str, Any]) -> str:
    cols: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for key in ("sd15", "sdturbo", "tiny"):
        case = data.get(key)
        if case:
            for kind in ("named", "nobody"):
                cols.append((f"{case['short']} {kind}", case, case["requests"][kind]))
    headers = ["ms (median)"] + [c[0] for c in cols]

    def row(title: str, fn: Callable[[dict[str, Any], dict[str, Any]], object]) -> list[object]:
        return [title] + [fn(case, r) for _, case, r in cols]

    def analyzer_split(c: dict[str, Any], r: dict[str, Any]) -> str:
        refs, output = (
            r["face_analyze_in_verify_refs_median_ms"],
            r["face_analyze_in_verify_output_median_ms"],
        )
        return f"{refs:.0f} / {output:.0f}"

    def probes(c: dict[str, Any], r: dict[str, Any]) -> str:
        return " / ".join(f"{r['outside_probes_median_ms'].get(k, 0.0):.1f}" for k in OUTSIDE_PROBES)

    def measured(c: dict[str, Any], r: dict[str, Any]) -> str:
        steps, calls = c["settings"]["steps_run"], r["unet_calls_measured"]
        return f"{r['generate_measured_median_ms']:.0f} ({steps} st, {calls} UNet)"

    def target(c: dict[str, Any], r: dict[str, Any]) -> str:
        mark = ", EXTRAPOLATED" if r["generation_extrapolated"] else ""
        return f"{r['generation_target_ms']:.0f} ({c['settings']['target_steps']} st{mark})"

    def gen_parts(c: dict[str, Any], r: dict[str, Any]) -> str:
        p = r["generate_parts_median_ms"]
        return " / ".join(f"{p[k]:.0f}" for k in ("unet", "text_encoder", "vae_decode", "rest"))

    def percent(key: str) -> Callable[[dict[str, Any], dict[str, Any]], object]:
        return lambda c, r: f"{r[key]:.3f} %"

    def stage(name: str) -> Callable[[dict[str, Any], dict[str, Any]], object]:
        return lambda c, r: r["stages_median_ms"][name]

    rows = [row(name, stage(name)) for name in STAGE_NAMES if name != "generate"]
    rows += [
        row("**sum of non-generation stages**", lambda c, r: r["non_generation_stages_median_ms"]),
        row("  of which face analyzer (refs / output)", analyzer_split),
        row("outside stages (wall - sum of stages)", lambda c, r: r["outside_stages_median_ms"]),
        row("  decode uploads / subject get / rate limit", probes),
        row("  rest (job, admission, metrics)", lambda c, r: r["outside_unprobed_median_ms"]),
        row("**gate overhead (all but generate)**", lambda c, r: r["overhead_median_ms"]),
        row("generate stage, measured", measured),
        row("  of which UNet / text encoder / VAE decode / rest", gen_parts),
        row("generation at target", target),
        row("**overhead / generation**", percent("overhead_percent_of_generation")),
        row("stages only / generation", percent("non_generation_stages_percent_of_generation")),
        row("gate.generate wall, measured", lambda c, r: r["wall_median_ms"]),
    ]
    where = "SMOKE run, tiny pipeline: NOT a measurement" if data.get("smoke") else data.get("device", "cpu")
    lines = [
        f"# Gate overhead: the whole gate around one generation ({where})",
        "",
        md_table(headers, rows),
        "",
    ]
    for g in data["goals"]:
        lines.append(f"- {g['what']}: {goal_text(g['goal'], '%') if g['goal'] else g['note']}")
    lines.append("")
    for key in ("sd15", "sdturbo", "tiny"):
        case = data.get(key)
        if case and case["requests"]["named"]["generation_extrapolated"]:
            lines.append(f"**{case['short']} generation EXTRAPOLATED**: {case['extrapolation']}")
    lines += ["", "Caveats: " + "; ".join(data["caveats"]) + "."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- main


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--sd15-steps", type=int, default=2, help="steps actually run (20: no extrapolation)")
    parser.add_argument("--repeats", type=int, default=3, help="timed requests of each kind, after warm-up")
    parser.add_argument("--work", type=Path, default=None, help="build/reuse pipelines here")
    parser.add_argument("--keep", action="store_true", help="keep the built pipelines")
    parser.add_argument("--skip-sd15", action="store_true")
    parser.add_argument("--skip-turbo", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the gate runs")
    parser.add_argument(
        "--policy",
        type=Path,
        default=None,
        help="policy file (default: the shipped one, with the content classifier and the prompt rules "
        "by meaning; the device run turns both off: their packages do not fit its carry limit)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="the tiny pipeline once: proves the script runs, no figure"
    )
    args = parser.parse_args()
    if args.smoke:
        args.skip_sd15, args.skip_turbo, args.repeats = True, True, 1
    repo_on_path()
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    from consentry.provenance.keys import init_dev_keys

    started = time.perf_counter()
    data: dict[str, Any] = {
        "machine": machine_info(),
        "versions": versions(),
        "device": args.device,
        "smoke": args.smoke,
        "policy": str(args.policy) if args.policy else "shipped default",
    }
    enroll_paths, reference_path = one_person_photos(faces_dir(), 3)
    data["photos"] = {"enrolled": [p.name for p in enroll_paths], "reference": reference_path.name}
    work = (args.work or Path(tempfile.mkdtemp(prefix="consentry-bench-gate-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(tempfile.mkdtemp(prefix="gate-", dir=work))
    try:
        keys_dir = runs_dir / "keys"
        init_dev_keys(keys_dir)
        cases = []
        if not args.skip_sd15:
            cases.append(("sd15", "SD-1.5 arch", "sd15_random.py", args.sd15_steps, 20, 7.5))
        if not args.skip_turbo:
            cases.append(("sdturbo", "SD-Turbo arch", "sdturbo_random.py", 1, 1, 0.0))
        if args.smoke:
            cases.append(("tiny", "tiny (smoke)", "tiny", 1, 1, 0.0))
        for key, short, script, steps, target, guidance in cases:
            model_dir = work / key
            t0 = time.perf_counter()
            built = build_tiny(model_dir) if script == "tiny" else build(script, model_dir)
            built["build_wall_s"] = rounded(time.perf_counter() - t0, 1)
            print(f"{short}: built {model_dir} in {built['build_wall_s']} s; running the gate", flush=True)
            case = asyncio.run(
                run_case(
                    f"{short} (RANDOM weights)",
                    model_dir,
                    runs_dir / key,
                    keys_dir,
                    enroll_paths,
                    reference_path,
                    steps=steps,
                    target_steps=target,
                    guidance=guidance,
                    repeats=args.repeats,
                    device=args.device,
                    image_size=256 if script == "tiny" else 512,
                    policy_file=args.policy,
                )
            )
            case["short"], case["build"] = short, built
            named = case["requests"]["named"]
            case["extrapolation"] = (
                f"requests ran {steps} steps ({named['unet_calls_measured']} UNet evaluations, CFG batched); "
                f"{target} steps = measured generate stage + ({named['unet_calls_target']} - "
                f"{named['unet_calls_measured']}) x median UNet evaluation "
                f"({named['unet_call_median_ms']:.0f} ms), "
                "linear per evaluation (text encoding and VAE decode counted once)"
                if named["generation_extrapolated"]
                else "not extrapolated: the full request was run"
            )
            data[key] = case
            print(
                f"{short}: overhead {named['overhead_median_ms']:.0f} ms = "
                f"{named['overhead_percent_of_generation']:.3f} % of generation (named)",
                flush=True,
            )
            if not args.keep:
                shutil.rmtree(model_dir, ignore_errors=True)
    finally:
        shutil.rmtree(runs_dir, ignore_errors=True)
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    goals: list[dict[str, Any]] = []
    if "sd15" in data:
        for kind in ("named", "nobody"):
            value = data["sd15"]["requests"][kind]["overhead_percent_of_generation"]
            goals.append(
                {
                    "what": f"SD-1.5 arch, 512² 20 steps, CPU, {kind}: overhead <= 1 % of generation",
                    "goal": goal(value, GOAL_SD15_PERCENT, at_most=True),
                }
            )
    if "sdturbo" in data:
        for kind in ("named", "nobody"):
            value = data["sdturbo"]["requests"][kind]["overhead_percent_of_generation"]
            what = f"SD-Turbo arch, 512² 1 step, {kind}: overhead <= 10 % of generation on GPU"
            if args.device == "cuda":
                goals.append({"what": what, "goal": goal(value, GOAL_TURBO_GPU_PERCENT, at_most=True)})
            else:
                goals.append(
                    {
                        "what": what,
                        "goal": None,
                        "note": f"not measured (no CUDA device); CPU 1-step ratio {value:.3f} %",
                    }
                )
    if "tiny" in data:
        goals.append({"what": "smoke run", "goal": None, "note": "tiny pipeline, not a measurement"})
    data["goals"] = goals
    data["caveats"] = [
        "absolute CPU times are indicative only: shared 2-core machine, see the load averages",
        "pipelines have RANDOM weights and the tiny tokenizer (534 entries): outputs are noise, so "
        "verify_output runs face detection on a faceless image (allowed: require_output_face off)",
        "a generated image with faces would add alignment, embedding and index look-ups per face "
        "to verify_output",
        (
            "on CUDA the gate's CPU-side stages (PNG, C2PA, SQLite, the simulated JPEG of the watermark "
            "check) stay on the CPU"
            if args.device == "cuda"
            else "GPU ratio not measured: GPU generation is ~100x faster while the gate's CPU-side "
            "stages (PNG, watermark, C2PA, SQLite) are not"
        ),
        "stage medians from few requests (see runs) after one warm-up request of each kind",
    ]
    data["bench_wall_s"] = rounded(time.perf_counter() - started, 1)
    text = markdown(data)
    name = (
        "gate_overhead_smoke"
        if args.smoke
        else "gate_overhead_gpu"
        if args.device == "cuda"
        else "gate_overhead"
    )
    json_path, md_path = write_results(name, data, text, args.results_dir)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path} ({data['bench_wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
