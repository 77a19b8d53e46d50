"""Plain-text renderings of the gate's reports for the terminal (``--json`` prints them whole)."""

from __future__ import annotations

from typing import Any

from consentry.provenance.verification import ProvenanceReport


def _lines(title: str, items: list[str]) -> list[str]:
    return [f"{title}:", *(f"  - {item}" for item in items)] if items else []


def provenance_text(report: ProvenanceReport) -> str:
    """What an auditor reads first: the C2PA state, the mark, the record, and what they prove."""
    r: dict[str, Any] = report.as_dict()
    c2pa, mark, record, assessment = r["c2pa"], r["watermark"], r["record"], r["assessment"]
    lines = [
        f"C2PA manifest: {c2pa.get('state') or 'none'}" + (f" ({c2pa['note']})" if c2pa.get("note") else "")
    ]
    if mark["found"]:
        confidence, key = f"{mark['confidence']:.2f}", mark.get("key_id")
        lines.append(f"watermark: payload {mark['payload']} (confidence {confidence}, key {key})")
    else:
        lines.append("watermark: none found with this deployment's keys")
    if record:
        lines.append(
            f"generation record: {record.get('id')} at audit seq {record.get('audit_seq')}, "
            f"model {record.get('model')}, created {record.get('created_at')}"
        )
    else:
        lines.append("generation record: none")
    lines.append(f"basis: {assessment.get('basis')}")
    lines += _lines("this proves", list(assessment.get("proves", [])))
    lines += _lines("this does not prove", list(assessment.get("does_not_prove", [])))
    return "\n".join(lines)
