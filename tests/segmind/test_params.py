"""RelightParams: Segmind's fields, defaults and bounds, exactly (docs/reference/upstream.md)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from relightq.segmind.params import DIMENSIONS, RelightParams, final_size

# (field, accepted edge values, rejected values) for every upstream field.
EDGES: list[tuple[str, list[Any], list[Any]]] = [
    ("prompt", ["a", "x" * 4000], ["", "x" * 4001, None]),
    ("cfg", [1, 32, 2.5], [0.99, 32.01, "abc"]),
    ("seed", [0, -1, 2**31, None], [1.5, "seed"]),
    ("steps", [1, 100], [0, 101, 2.5]),
    ("width", [256, 320, 1024], [255, 300, 1088, 0]),
    ("height", [256, 640, 1024], [192, 1000, 2048]),
    (
        "light_source",
        ["None", "Left Light", "Right Light", "Top Light", "Bottom Light"],
        ["left", "Left", "", None],
    ),
    ("highres_scale", [1, 3, 1.5], [0.99, 3.01]),
    ("output_format", ["webp", "jpg", "png"], ["jpeg", "gif", "PNG"]),
    ("lowres_denoise", [0.1, 1], [0.09, 1.01]),
    ("output_quality", [0, 100], [-1, 101]),
    ("appended_prompt", ["", "best quality"], ["x" * 4001]),
    ("highres_denoise", [0.1, 1], [0.0, 1.5]),
    ("negative_prompt", ["", "blurry"], ["x" * 4001]),
    ("number_of_images", [1, 12], [0, 13]),
]


def test_defaults_match_segmind() -> None:
    params = RelightParams(prompt="studio light")
    assert params.model_dump() == {
        "prompt": "studio light",
        "cfg": 2,
        "seed": 42,
        "steps": 25,
        "width": 512,
        "height": 640,
        "light_source": "None",
        "highres_scale": 1.5,
        "output_format": "webp",
        "lowres_denoise": 0.9,
        "output_quality": 80,
        "appended_prompt": "best quality",
        "highres_denoise": 0.5,
        "negative_prompt": "lowres, bad anatomy, bad hands, cropped, worst quality",
        "number_of_images": 1,
    }


def test_every_field_of_the_spec_table_is_covered() -> None:
    assert {name for name, _, _ in EDGES} == set(RelightParams.model_fields)


@pytest.mark.parametrize(("field", "value"), [(f, v) for f, ok, _ in EDGES for v in ok])
def test_accepts_values_inside_the_bounds(field: str, value: Any) -> None:
    body = {"prompt": "p", field: value}
    assert getattr(RelightParams.model_validate(body), field) == value


@pytest.mark.parametrize(("field", "value"), [(f, v) for f, _, bad in EDGES for v in bad])
def test_rejects_values_outside_the_bounds_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        RelightParams.model_validate({"prompt": "p", field: value})
    assert [e["loc"][0] for e in info.value.errors()] == [field]


def test_dimensions_are_the_multiples_of_64_from_256_to_1024() -> None:
    assert DIMENSIONS == (256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024)


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="guidance"):
        RelightParams.model_validate({"prompt": "p", "guidance": 3})


def test_null_seed_is_omitted_upstream_so_segmind_picks_one() -> None:
    assert "seed" not in RelightParams(prompt="p", seed=None).upstream_fields()


@pytest.mark.parametrize(
    ("width", "height", "scale", "expected"),
    [
        (512, 640, 1.5, (768, 960)),
        (256, 256, 1, (256, 256)),
        (1024, 1024, 3, (3072, 3072)),
        (320, 384, 1.1, (384, 448)),
    ],
)
def test_final_size_follows_the_upstream_rounding(
    width: int, height: int, scale: float, expected: tuple[int, int]
) -> None:
    assert final_size(width, height, scale) == expected
