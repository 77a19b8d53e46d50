"""The ``consentry`` command.

Exit codes: 0 success; 2 bad input or configuration (a clear message, nothing written);
3 the gate refused the request (the refusal is audited); 4 the audit chain is broken;
1 an unexpected internal error.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from consentry.gateway.cli import (
    adapter_cmds,
    calibrate_cmd,
    consent_cmds,
    gate_cmds,
    setup_cmds,
    watermark_cmds,
)
from consentry.gateway.cli.parser import build
from consentry.policies.errors import ConsentryError, RefusedError, StageError

HANDLERS = {
    "demo": setup_cmds.cmd_demo,
    "serve": setup_cmds.cmd_serve,
    "keys_init": setup_cmds.cmd_keys_init,
    "keys_rotate_watermark": setup_cmds.cmd_keys_rotate_watermark,
    "models_tiny": setup_cmds.cmd_models_tiny,
    "principal_add": consent_cmds.cmd_principal_add,
    "enroll": consent_cmds.cmd_enroll,
    "grant": consent_cmds.cmd_grant,
    "revoke": consent_cmds.cmd_revoke,
    "erase": consent_cmds.cmd_erase,
    "key_revoke": consent_cmds.cmd_key_revoke,
    "generate": gate_cmds.cmd_generate,
    "adapters_train": adapter_cmds.cmd_adapters_train,
    "adapters_list": adapter_cmds.cmd_adapters_list,
    "adapters_delete": adapter_cmds.cmd_adapters_delete,
    "verify": gate_cmds.cmd_verify,
    "audit_verify": gate_cmds.cmd_audit_verify,
    "audit_export": gate_cmds.cmd_audit_export,
    "calibrate": calibrate_cmd.cmd_calibrate,
    "watermark_embed": watermark_cmds.cmd_watermark_embed,
    "watermark_decode": watermark_cmds.cmd_watermark_decode,
}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("CONSENTRY_LOG_LEVEL", "WARNING"))
    args = build(HANDLERS).parse_args(argv)
    from consentry.gateway.wiring import quiet_libraries

    quiet_libraries()
    try:
        return int(args.func(args))
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
