"""The ``consentry`` command.

Exit codes: 0 success; 2 bad input or configuration (a clear message, nothing written);
3 the gate refused the request (the refusal is audited); 4 the audit chain is broken;
1 an unexpected internal error.

Start-up cost: the parser is built from argument definitions alone, and each handler is named
by a ``"module:function"`` string that is imported only when its command runs, so ``--help``,
a parse error or a key command never imports the gate, the detectors or the generators (torch,
diffusers, transformers, OpenCV). ``tests/gateway/test_cli_imports.py`` holds this;
``bench/cli_startup.py`` times it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from consentry.gateway.cli.parser import Handler, build
from consentry.policies.errors import ConsentryError, RefusedError, StageError

# Command key -> "module:function" in consentry.gateway.cli, imported when the command runs.
HANDLERS: dict[str, str] = {
    "demo": "setup_cmds:cmd_demo",
    "serve": "setup_cmds:cmd_serve",
    "keys_init": "setup_cmds:cmd_keys_init",
    "keys_rotate_watermark": "setup_cmds:cmd_keys_rotate_watermark",
    "models_tiny": "setup_cmds:cmd_models_tiny",
    "principal_add": "consent_cmds:cmd_principal_add",
    "enroll": "consent_cmds:cmd_enroll",
    "enrollments_challenge": "consent_cmds:cmd_enrollments_challenge",
    "grant": "consent_cmds:cmd_grant",
    "revoke": "consent_cmds:cmd_revoke",
    "erase": "consent_cmds:cmd_erase",
    "key_revoke": "consent_cmds:cmd_key_revoke",
    "generate": "gate_cmds:cmd_generate",
    "adapters_train": "adapter_cmds:cmd_adapters_train",
    "adapters_list": "adapter_cmds:cmd_adapters_list",
    "adapters_delete": "adapter_cmds:cmd_adapters_delete",
    "verify": "gate_cmds:cmd_verify",
    "audit_verify": "gate_cmds:cmd_audit_verify",
    "audit_export": "gate_cmds:cmd_audit_export",
    "calibrate": "calibrate_cmd:cmd_calibrate",
    "watermark_embed": "watermark_cmds:cmd_watermark_embed",
    "watermark_decode": "watermark_cmds:cmd_watermark_decode",
    "policy_check": "policy_cmds:cmd_policy_check",
}


def handler(key: str) -> Handler:
    """The function of command ``key``, importing its module now."""
    module, _, name = HANDLERS[key].partition(":")
    fn: Handler = getattr(importlib.import_module(f"consentry.gateway.cli.{module}"), name)
    return fn


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed arguments; ``args.handler`` is the command key (see :data:`HANDLERS`)."""
    return build(HANDLERS).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("CONSENTRY_LOG_LEVEL", "WARNING"))
    args = parse(argv)
    # Commands that load a model quieten diffusers and transformers themselves, after checking
    # their input (common.quiet_model_libraries); the others never import them.
    # pydantic is imported by every command that builds a request or reads the settings.
    from pydantic import ValidationError

    try:
        return int(handler(args.handler)(args))
    except (RefusedError, StageError) as exc:
        print(f"refused [{exc.code}]: {exc.detail}", file=sys.stderr)
        return 3
    except ConsentryError as exc:
        print(f"error [{exc.code}]: {exc.detail}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"error [input.invalid]: {problems}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
