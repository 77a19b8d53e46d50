"""The code registry is complete, used, and the only place a stable code is spelled out."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from consentry.policies import codes

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "detectors", "provenance", "generation", "policies")
REGISTRY = ROOT / "policies" / "codes.py"
CODE_SHAPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)?$")
"""``[a-z_]`` words, one optional dot; digits are allowed after the first letter (``c2pa.*``)."""


def _sources() -> list[Path]:
    found = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    return [p for p in found if p != REGISTRY and "__pycache__" not in p.parts]


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_audit_event(call: ast.Call) -> bool:
    """``audit.append("identity.erased", ...)``: an audit event type, not a code."""
    func = call.func
    return isinstance(func, ast.Attribute) and func.attr == "append" and _name(func.value) == "audit"


def code_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """String literals used as codes: ``code="x.y"``, ``code = "x.y"`` (also annotated, and as a
    dataclass default), ``x.code == "x.y"``, ``Verdict.refuse("x.y", ...)``,
    ``Verdict.failed("x.y", ...)``, and any literal that spells a registered dotted code."""
    hits: list[ast.AST | None] = []
    exempt: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            hits.extend(kw.value for kw in node.keywords if kw.arg == "code")
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr in ("refuse", "failed")
                and _name(func.value) == "Verdict"
                and node.args
            ):
                hits.append(node.args[0])
            if _is_audit_event(node) and node.args:
                exempt.add(id(node.args[0]))
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_name(t) == "code" for t in targets):
                hits.append(node.value)
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_name(s) == "code" for s in sides):
                hits.extend(sides)
    dotted = {c for c in codes.ALL if "." in c}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in dotted and id(node) not in exempt:
            hits.append(node)
    found = {
        id(n): (n.lineno, n.value) for n in hits if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }
    return sorted(found.values())


def test_the_source_spells_no_code_outside_the_registry() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {value!r}"
        for path in _sources()
        for line, value in code_literals(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not found, "use consentry.policies.codes instead of literals:\n" + "\n".join(found)


def test_the_scan_finds_literals() -> None:
    sample = """
raise BadInputError("x", code="input.invalid")
class E(StageError):
    code = "stage.novel"
class F(StageError):
    code: ClassVar[str] = "stage.other"
v = Verdict.refuse("face.none", "no face")
w = Verdict.failed(
    "stage.error", "boom"
)
if exc.code != "keys.missing":
    pass
SkippedFile(path, "input.file_unreadable", "")
await self.audit.append("identity.erased", body)
raise BadInputError("x", code=codes.INPUT_INVALID)
"""
    values = [v for _, v in code_literals(ast.parse(sample))]
    assert values == [
        "input.invalid",
        "stage.novel",
        "stage.other",
        "face.none",
        "stage.error",
        "keys.missing",
        "input.file_unreadable",
    ]


def _registered() -> dict[str, str]:
    return {n: v for n, v in vars(codes).items() if n.isupper() and n != "ALL" and isinstance(v, str)}


def test_all_is_every_registered_constant() -> None:
    assert set(_registered().values()) == codes.ALL
    assert all(isinstance(code, str) for code in codes.ALL)


def test_every_registered_code_is_used() -> None:
    tests = [p for p in sorted((ROOT / "tests").rglob("*.py")) if p != Path(__file__).resolve()]
    text = "\n".join(p.read_text(encoding="utf-8") for p in [*_sources(), *tests])
    unused = [n for n in _registered() if not re.search(rf"\bcodes\.{n}\b", text)]
    assert not unused, f"registered but never used (remove them): {unused}"


def test_codes_are_unique_and_well_formed() -> None:
    registered = _registered()
    assert len(set(registered.values())) == len(registered), "two names for one code"
    bad = sorted(v for v in registered.values() if not CODE_SHAPE.match(v))
    assert not bad, f"malformed codes: {bad}"
