"""Request limits are defined once: the HTTP schema, the generation job and the settings agree."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from consentry.gateway.schemas import GenerateBody
from consentry.generation.base import GenerationJob
from consentry.policies import limits
from consentry.policies.config import Settings
from consentry.policies.errors import BadInputError


def _schema_bounds() -> dict[str, dict[str, int]]:
    props = GenerateBody.model_json_schema()["properties"]

    def bounds(field: str) -> dict[str, int]:
        spec = props[field]
        options = spec.get("anyOf", [spec])
        merged: dict[str, int] = {}
        for option in options:
            merged |= {
                k: v for k, v in option.items() if k in ("maximum", "maxLength", "maxItems", "minimum")
            }
        return merged

    return {f: bounds(f) for f in ("prompt", "steps", "width", "num_images", "references", "seed")}


def test_schema_uses_the_shared_limits() -> None:
    b = _schema_bounds()
    assert b["prompt"]["maxLength"] == limits.MAX_PROMPT_CHARS
    assert b["steps"]["maximum"] == limits.MAX_STEPS
    assert (b["width"]["minimum"], b["width"]["maximum"]) == (limits.MIN_SIDE, limits.MAX_SIDE)
    assert b["num_images"]["maximum"] == limits.MAX_IMAGES
    assert b["references"]["maxItems"] == limits.MAX_REFERENCES
    assert b["seed"]["maximum"] == limits.MAX_SEED


def job(**overrides: Any) -> GenerationJob:  # any value: refusing bad ones is the test
    args: dict[str, Any] = dict(prompt="p", seed=0, steps=4, width=256, height=256, guidance_scale=5.0)
    return GenerationJob(**(args | overrides))


@pytest.mark.parametrize(
    ("field", "edge"),
    [
        ("prompt", "x" * limits.MAX_PROMPT_CHARS),
        ("steps", limits.MAX_STEPS),
        ("num_images", limits.MAX_IMAGES),
        ("width", limits.MAX_SIDE),
        ("seed", limits.MAX_SEED),
        ("guidance_scale", limits.MAX_GUIDANCE),
        ("references", tuple(Image.new("RGB", (8, 8)) for _ in range(limits.MAX_REFERENCES))),
    ],
)
def test_the_job_accepts_the_schema_edge_and_refuses_one_past(field: str, edge: object) -> None:
    job(**{field: edge})
    past: object
    if isinstance(edge, str):
        past = edge + "x"
    elif isinstance(edge, tuple):
        past = (*edge, edge[0])
    elif isinstance(edge, float):
        past = edge + 0.5
    else:
        assert isinstance(edge, int)
        past = edge + (limits.SIDE_MULTIPLE if field == "width" else 1)
    with pytest.raises(BadInputError):
        job(**{field: past})


def test_settings_cannot_exceed_the_limits() -> None:
    assert Settings(max_references=limits.MAX_REFERENCES).max_references == limits.MAX_REFERENCES
    for field, value in [
        ("max_references", limits.MAX_REFERENCES + 1),
        ("generation_steps", limits.MAX_STEPS + 1),
        ("image_size", limits.MAX_SIDE + 8),
        ("image_size", limits.MIN_SIDE - 8),
    ]:
        with pytest.raises(ValidationError):
            Settings(**{field: value})  # type: ignore[arg-type]  # the field is chosen at run time
