"""A stand-in upstream image service for the upstream-mode tests, run in its own process.

It serves both API shapes the gate speaks upstream, on 127.0.0.1 only, by running the project's
tiny diffusers pipeline:

- OpenAI Images: ``POST /v1/images/generations`` (JSON) and ``POST /v1/images/edits``
  (multipart, references under ``image[]``); answers ``{"data": [{"b64_json": ...}]}``.
- AUTOMATIC1111: ``POST /sdapi/v1/txt2img`` and ``POST /sdapi/v1/img2img`` (``init_images``);
  answers ``{"images": [...]}``.

A marker in the prompt makes it misbehave: ``[slow]`` sleeps ``$UPSTREAM_SLOW_S`` seconds before
answering, ``[500]`` answers 500, ``[503]`` always answers 503, ``[503-once]`` answers 503 the
first time it sees that prompt and then generates, ``[garbage]`` returns base64 of random bytes,
``[extra]`` one image more than asked, ``[html]`` a 200 that is not JSON, ``[noimages]`` JSON
without images, and ``[face]`` returns the photo at ``$UPSTREAM_FACE_PHOTO`` (resized to the
asked size) instead of generating.

``GET /_log`` lists every request received, in order, with what it asked for and from which
client port (the tests count attempts and check connection reuse with it).

Run: ``python tests/upstream_server.py --model DIR --ready FILE``; it loads the model, listens on
a free port and then writes that port to FILE. :func:`running_upstream` does all of that and
always terminates the process.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# -- the fixture side (runs in the test process) --------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    url: str
    """Server root, e.g. ``http://127.0.0.1:PORT`` (the A1111 base URL)."""

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    def log(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = httpx.get(f"{self.url}/_log", timeout=10).json()
        return entries

    def attempts(self, prompt: str) -> list[dict[str, Any]]:
        return [entry for entry in self.log() if entry["prompt"] == prompt]


@contextmanager
def running_upstream(
    model_dir: Path,
    workdir: Path,
    *,
    face: Path | None = None,
    slow_s: float = 5.0,
    start_timeout_s: float = 180,
) -> Iterator[Upstream]:
    """Start the server in a subprocess, wait (bounded) until it listens, always terminate it."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready, log_path = workdir / "port", workdir / "server.log"
    env = {**os.environ, "UPSTREAM_SLOW_S": str(slow_s)}
    if face is not None:
        env["UPSTREAM_FACE_PHOTO"] = str(face)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-P",
                str(Path(__file__).resolve()),
                "--model",
                str(model_dir),
                "--ready",
                str(ready),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + start_timeout_s
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"upstream server exited {proc.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"upstream server not ready in {start_timeout_s} s:\n{log_path.read_text()}"
                )
            time.sleep(0.05)
        yield Upstream(f"http://127.0.0.1:{int(ready.read_text())}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@contextmanager
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound (so nothing else takes it), never
    listening (so the kernel answers a connection attempt with a reset)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- the server side (runs in its own process) ----------------------------------------------------


def _png_b64(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _build_app(model_dir: Path) -> Any:
    import asyncio

    import anyio
    from litestar import Litestar, Request, get, post
    from litestar.response import Response
    from PIL import Image

    from consentry.gateway.wiring import quiet_libraries
    from consentry.generation.base import GenerationJob
    from consentry.generation.diffusers_backend import DiffusersTextToImage

    quiet_libraries()
    generator = DiffusersTextToImage(model_dir, device="cpu")
    slow_s = float(os.environ.get("UPSTREAM_SLOW_S", "5"))
    face = os.environ.get("UPSTREAM_FACE_PHOTO")
    received: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()

    async def answer(request: Request, shape: str, params: dict[str, Any], refs: list[Any]) -> Response:
        prompt = str(params.get("prompt", ""))
        width, height = params["width"], params["height"]
        client = request.client
        received.append(
            {
                "path": request.url.path,
                "prompt": prompt,
                "params": {k: v for k, v in params.items() if k != "init_images"},
                "references": [list(ref.size) for ref in refs],
                "authorization": request.headers.get("authorization"),
                "client_port": client.port if client else None,
            }
        )
        key = (request.url.path, prompt)
        if "[503]" in prompt or ("[503-once]" in prompt and key not in seen):
            seen.add(key)
            return Response({"error": {"message": "warming up (test marker)"}}, status_code=503)
        if "[500]" in prompt:
            return Response({"error": {"message": "internal failure (test marker)"}}, status_code=500)
        if "[html]" in prompt:
            return Response("<html>not json</html>", media_type="text/html", status_code=200)
        if "[noimages]" in prompt:
            return Response({"created": int(time.time())})
        if "[slow]" in prompt:
            await asyncio.sleep(slow_s)
        n = int(params["n"]) + (1 if "[extra]" in prompt else 0)
        if "[garbage]" in prompt:
            encoded = [base64.b64encode(os.urandom(4096)).decode("ascii") for _ in range(n)]
        elif "[face]" in prompt:
            if not face:
                return Response({"error": {"message": "no UPSTREAM_FACE_PHOTO"}}, status_code=500)
            with Image.open(face) as photo:
                image = photo.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
            encoded = [_png_b64(image)] * n
        else:
            job = GenerationJob(
                prompt=prompt,
                negative_prompt=str(params.get("negative_prompt", "")),
                seed=int(params.get("seed", 0)),
                steps=int(params.get("steps", 2)),
                width=width,
                height=height,
                num_images=n,
                guidance_scale=float(params.get("cfg_scale", 5.0)),
            )
            output = await anyio.to_thread.run_sync(generator.generate, job)
            encoded = [_png_b64(image) for image in output.images]
        if shape == "openai":
            return Response({"created": int(time.time()), "data": [{"b64_json": e} for e in encoded]})
        return Response({"images": encoded, "parameters": {}, "info": "{}"})

    def openai_params(fields: dict[str, Any]) -> dict[str, Any]:
        width, height = (int(side) for side in str(fields["size"]).split("x"))
        return {**fields, "width": width, "height": height, "n": int(fields.get("n", 1))}

    def a1111_params(body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "n": int(body.get("batch_size", 1)) * int(body.get("n_iter", 1))}

    def open_png(data: bytes) -> Any:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")

    @post("/v1/images/generations")
    async def generations(request: Request) -> Response:
        return await answer(request, "openai", openai_params(await request.json()), [])

    @post("/v1/images/edits")
    async def edits(request: Request) -> Response:
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        refs = [open_png(await upload.read()) for upload in form.getall("image[]")]
        return await answer(request, "openai", openai_params(fields), refs)

    @post("/sdapi/v1/txt2img")
    async def txt2img(request: Request) -> Response:
        return await answer(request, "a1111", a1111_params(await request.json()), [])

    @post("/sdapi/v1/img2img")
    async def img2img(request: Request) -> Response:
        body = await request.json()
        refs = [open_png(base64.b64decode(item)) for item in body.get("init_images", [])]
        return await answer(request, "a1111", a1111_params(body), refs)

    @get("/_log", sync_to_thread=False)
    def log() -> list[dict[str, Any]]:
        return received

    # Handlers are defined here (after the model loaded), so their annotations need the names.
    namespace = {"Request": Request, "Response": Response}
    return Litestar([generations, edits, txt2img, img2img, log], signature_namespace=namespace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--ready", type=Path, required=True)
    args = parser.parse_args()

    import uvicorn

    app = _build_app(args.model)  # slow (model load): before the port is announced
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections queue from here on, so announcing the port now is safe
    staging = args.ready.with_suffix(".tmp")
    staging.write_text(str(sock.getsockname()[1]))
    staging.replace(args.ready)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, timeout_keep_alive=30)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
