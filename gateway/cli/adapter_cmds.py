"""``consentry adapters``: train, list and delete per-identity LoRA adapters.

``adapters train`` runs the training job in this process, in the foreground, with a progress bar
on standard error; Ctrl-C stops it and leaves no adapter. The job is the same one
``POST /v1/identities/{id}/adapters`` starts in the server's background.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING

from consentry.gateway.cli.common import local_actor, read_files, with_gate
from consentry.gateway.requests import AdapterTrainingRequest
from consentry.policies import codes
from consentry.policies.errors import StageError

if TYPE_CHECKING:
    # Only for annotations: with_gate imports the gate once the command's input is checked.
    from consentry.gateway.gate import Gate
    from consentry.gateway.storage.adapters import AdapterView


def cmd_adapters_train(args: argparse.Namespace) -> int:
    req = AdapterTrainingRequest(
        identity_id=args.identity,
        photos=read_files(args.photo),
        steps=args.steps,
        rank=args.rank,
        prior_images=args.prior_images,
    )

    async def run(gate: Gate) -> int:
        from tqdm import tqdm

        principal = await gate.principal_named(local_actor(), args.as_principal)
        started = await gate.train_adapter(principal, req)
        print(f"training {started.id} for {started.identity_id} ({started.photos} photos)", file=sys.stderr)
        with tqdm(total=started.steps, desc=started.id, unit="step", file=sys.stderr) as bar:

            def progress(step: int, total: int, loss: float) -> None:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{loss:.4f}")

            done = await gate.wait_adapter(principal, started.id, progress)
        if done.status != "ready":
            raise StageError(
                f"adapter {done.id} was not trained: {done.error}",
                code=done.error_code or codes.ADAPTER_TRAINING_FAILED,
            )
        print(json.dumps(_row(done)))
        return 0

    return asyncio.run(with_gate(run, models=True))


def _row(view: AdapterView) -> dict[str, object]:
    return {k: v for k, v in view.as_dict().items() if v is not None}


def cmd_adapters_list(args: argparse.Namespace) -> int:
    async def run(gate: Gate) -> int:
        views = await gate.list_adapters(local_actor(), args.identity)
        if args.json:
            print(json.dumps([v.as_dict() for v in views], default=str))
            return 0
        if not views:
            print("no adapters")
        for v in views:
            loss = f" loss={v.loss:.4f}" if v.loss is not None else ""
            error = f" [{v.error_code}]" if v.error_code else ""
            print(
                f"{v.id}  {v.identity_id}  {v.status}{error}  {v.steps_done}/{v.steps} steps"
                f"  rank={v.rank} prior={v.prior_images}{loss}"
            )
        return 0

    return asyncio.run(with_gate(run))


def cmd_adapters_delete(args: argparse.Namespace) -> int:
    async def run(gate: Gate) -> int:
        await gate.delete_adapter(local_actor(), args.adapter)
        print(json.dumps({"id": args.adapter, "deleted": True}))
        return 0

    return asyncio.run(with_gate(run))
