"""``consentry policy check``: validate a policy file, and dry-run its prompt rules on a prompt.

Exit 0 when the file is valid (with ``--prompt``, whether or not the prompt is refused: the
answer is the output); 2 for a missing or invalid file or a bad prompt, with the file's line in
the message. Only ``--prompt`` on a policy with ``semantic = true`` loads the embedding model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from consentry.gateway.cli.common import load_settings
from consentry.policies import codes
from consentry.policies.errors import BadInputError
from consentry.policies.limits import MAX_PROMPT_CHARS
from consentry.policies.policy import Policy, load_policy

if TYPE_CHECKING:
    from consentry.policies.prompt_rules import SemanticRule


def _policy_file(arg: str | None) -> Path | None:
    """The file named on the command line (relative to the working directory), else the
    configured ``policy_file`` (None: the shipped default)."""
    return Path(arg) if arg is not None else load_settings().policy_file


def _checked_prompt(text: str) -> str:
    if not text.strip():
        raise BadInputError("--prompt is empty", code=codes.POLICY_PROMPT_INVALID)
    if len(text) > MAX_PROMPT_CHARS:
        raise BadInputError(
            f"--prompt has {len(text)} characters; a prompt has at most {MAX_PROMPT_CHARS}",
            code=codes.POLICY_PROMPT_INVALID,
        )
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        raise BadInputError("--prompt contains control characters", code=codes.POLICY_PROMPT_INVALID)
    return text


def _semantic_rule(policy: Policy) -> SemanticRule | None:
    if not policy.prompt.semantic:
        return None
    from consentry.detectors.prompt_embedder import bundled_semantic_rule
    from consentry.gateway.cli.common import quiet_model_libraries

    quiet_model_libraries()
    return bundled_semantic_rule(policy.prompt, load_settings().device)


def _summary(policy: Policy, source: str) -> dict[str, object]:
    p = policy.prompt
    return {
        "valid": True,
        "file": source,
        "version": policy.version,
        "deny_terms": len(p.deny_terms),
        "semantic": p.semantic,
        "categories": [
            {"name": c.name, "examples": len(c.examples), "threshold": c.threshold or p.semantic_threshold}
            for c in p.categories
        ],
        "purposes": sorted(policy.purposes),
        "content_classifier": policy.content.classifier,
    }


def cmd_policy_check(args: argparse.Namespace) -> int:
    prompt = _checked_prompt(args.prompt) if args.prompt is not None else None
    path = _policy_file(args.file)
    policy = load_policy(path)
    source = str(path) if path is not None else "default policy"
    if policy.prompt.semantic:
        from consentry.detectors.prompt_embedder import bundled_model_dir

        bundled_model_dir()  # the embedding model is installed (without importing torch)
    if prompt is None:
        summary = _summary(policy, source)
        if args.json:
            print(json.dumps(summary))
        else:
            cats = policy.prompt.categories
            meaning = (
                f"semantic rule on: {len(cats)} categories ({', '.join(c.name for c in cats)}), "
                f"threshold {policy.prompt.semantic_threshold:g}"
                if policy.prompt.semantic
                else f"semantic rule off ({len(cats)} categories)"
            )
            print(f"{source}: valid, version {policy.version}")
            print(f"  {len(policy.prompt.deny_terms)} deny terms; {meaning}")
            print(f"  purposes with their own rules: {', '.join(sorted(policy.purposes)) or 'none'}")
        return 0
    from consentry.policies.prompt_rules import screen_prompt

    screen = screen_prompt(prompt, policy.deny_terms_for(args.purpose), _semantic_rule(policy))
    if args.json:
        print(json.dumps({**screen.as_dict(), "policy_version": policy.version}))
    elif screen.verdict.allowed:
        print(f"allowed: {screen.verdict.reason}")
    else:
        print(f"refused [{screen.verdict.code}]: {screen.verdict.reason}")
    return 0
