"""The IC-Light request fields, exactly as Segmind names, defaults and bounds them.

docs/reference/upstream.md lists them.

One model serves the API's validation, the client's request body and the simulator's
validation, so the three can never disagree about what is allowed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

DIMENSIONS: tuple[int, ...] = tuple(range(256, 1025, 64))
LightSource = Literal["None", "Left Light", "Right Light", "Top Light", "Bottom Light"]
OutputFormat = Literal["webp", "jpg", "png"]

CONTENT_TYPES: dict[str, str] = {"webp": "image/webp", "jpg": "image/jpeg", "png": "image/png"}
EXTENSIONS: dict[str, str] = {v: k for k, v in CONTENT_TYPES.items()}

DEFAULT_NEGATIVE_PROMPT = "lowres, bad anatomy, bad hands, cropped, worst quality"


def _check_dimension(value: int) -> int:
    if value not in DIMENSIONS:
        raise ValueError(f"must be one of {', '.join(map(str, DIMENSIONS))}")
    return value


Dimension = Annotated[int, AfterValidator(_check_dimension)]

# Human-readable allowed values, used in every validation error so a client learns the
# range without reading the docs.
ALLOWED: dict[str, str] = {
    "prompt": "non-empty text, at most 4000 characters",
    "subject_image": "an http(s) URL, an s3://bucket/key URI, or an uploaded image file",
    "cfg": "a number from 1 to 32",
    "seed": "an integer, or null for a random seed",
    "steps": "an integer from 1 to 100",
    "width": "one of " + ", ".join(map(str, DIMENSIONS)),
    "height": "one of " + ", ".join(map(str, DIMENSIONS)),
    "light_source": "one of 'None', 'Left Light', 'Right Light', 'Top Light', 'Bottom Light'",
    "highres_scale": "a number from 1 to 3",
    "output_format": "one of 'webp', 'jpg', 'png'",
    "lowres_denoise": "a number from 0.1 to 1",
    "output_quality": "an integer from 0 to 100",
    "appended_prompt": "text, at most 4000 characters",
    "highres_denoise": "a number from 0.1 to 1",
    "negative_prompt": "text, at most 4000 characters",
    "number_of_images": "an integer from 1 to 12",
}


class RelightParams(BaseModel):
    """IC-Light generation parameters, everything but the subject image."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000)
    cfg: float = Field(default=2, ge=1, le=32)
    seed: int | None = 42
    steps: int = Field(default=25, ge=1, le=100)
    width: Dimension = 512
    height: Dimension = 640
    light_source: LightSource = "None"
    highres_scale: float = Field(default=1.5, ge=1, le=3)
    output_format: OutputFormat = "webp"
    lowres_denoise: float = Field(default=0.9, ge=0.1, le=1)
    output_quality: int = Field(default=80, ge=0, le=100)
    appended_prompt: str = Field(default="best quality", max_length=4000)
    highres_denoise: float = Field(default=0.5, ge=0.1, le=1)
    negative_prompt: str = Field(default=DEFAULT_NEGATIVE_PROMPT, max_length=4000)
    number_of_images: int = Field(default=1, ge=1, le=12)

    def final_size(self) -> tuple[int, int]:
        """Output size per upstream IC-Light: each side scaled and rounded to 64."""
        return final_size(self.width, self.height, self.highres_scale)

    def upstream_fields(self) -> dict[str, Any]:
        """The fields as sent to Segmind; a null seed is omitted so upstream picks one."""
        return self.model_dump(exclude_none=True)


PARAM_FIELDS: frozenset[str] = frozenset(RelightParams.model_fields)


def final_size(width: int, height: int, highres_scale: float) -> tuple[int, int]:
    """round(side * highres_scale / 64) * 64 for each side (upstream IC-Light code)."""
    return round(width * highres_scale / 64) * 64, round(height * highres_scale / 64) * 64
