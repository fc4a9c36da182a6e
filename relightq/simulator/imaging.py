"""Synthetic 'relighting' for the simulator: the subject on the final canvas under a fake light.

Pillow only (no numpy): every step is a C-level Pillow operation, so a 768x960 image takes
a few tens of milliseconds. These functions are CPU-bound; callers run them in a thread.
"""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from relightq.segmind.params import RelightParams

CAPTION = "relightq simulator – not IC-Light"
# Pillow's built-in font has no en dash glyph, so the drawn caption uses a plain hyphen.
DRAWN_CAPTION = CAPTION.replace("–", "-")
BACKGROUND = (236, 236, 232)
PIL_FORMATS = {"webp": "WEBP", "jpg": "JPEG", "png": "PNG"}

# Gradient orientation per light source: Image.linear_gradient runs dark (top) to light
# (bottom), so each direction is that ramp turned until its bright end faces the light.
_RAMP_TRANSFORMS: dict[str, list[Image.Transpose]] = {
    "Bottom Light": [],
    "Top Light": [Image.Transpose.FLIP_TOP_BOTTOM],
    "Left Light": [Image.Transpose.ROTATE_270],
    "Right Light": [Image.Transpose.ROTATE_90],
}


def _light_mask(light_source: str, size: tuple[int, int], rng: random.Random) -> Image.Image:
    ramp = Image.linear_gradient("L")
    for step in _RAMP_TRANSFORMS[light_source]:
        ramp = ramp.transpose(step)
    gamma = rng.uniform(0.8, 1.25)  # the falloff curve varies a little with the seed
    ramp = ramp.point([round(255 * (v / 255) ** gamma) for v in range(256)])
    return ramp.resize(size, Image.Resampling.BILINEAR)


def _apply_light(canvas: Image.Image, light_source: str, rng: random.Random) -> Image.Image:
    tint = (255, rng.randint(225, 250), rng.randint(190, 235))  # warm-ish, seed-dependent
    glow = Image.blend(canvas, Image.new("RGB", canvas.size, tint), rng.uniform(0.15, 0.3))
    if light_source not in _RAMP_TRANSFORMS:  # "None": a uniform soft light
        return ImageEnhance.Contrast(glow).enhance(0.9)
    bright = ImageEnhance.Brightness(glow).enhance(rng.uniform(1.2, 1.35))
    dark = ImageEnhance.Brightness(canvas).enhance(rng.uniform(0.25, 0.4))
    return Image.composite(bright, dark, _light_mask(light_source, canvas.size, rng))


def _draw_caption(image: Image.Image) -> None:
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, image.width // 48))
    left, top, right, bottom = draw.textbbox((0, 0), DRAWN_CAPTION, font=font)
    pad = 4
    x = image.width - (right - left) - 3 * pad
    y = image.height - (bottom - top) - 3 * pad
    draw.rectangle(
        (x - pad, y - pad, x + right - left + pad, y + bottom - top + pad), fill=(20, 20, 20)
    )
    draw.text((x - left, y - top), DRAWN_CAPTION, font=font, fill=(245, 245, 245))


def encode(image: Image.Image, output_format: str, quality: int) -> bytes:
    """Encode as webp/jpg/png; quality applies to webp and jpg only."""
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, "PNG", compress_level=3)  # speed over size: this is a test double
    elif output_format == "jpg":
        image.save(buffer, "JPEG", quality=quality)
    else:
        image.save(buffer, "WEBP", quality=quality, method=2)
    return buffer.getvalue()


def render(subject: Image.Image, params: RelightParams, index: int = 0) -> bytes:
    """One output image: the subject fitted on the final-size canvas, lit per light_source."""
    size = params.final_size()
    seed = params.seed if params.seed is not None else random.randrange(2**31)
    rng = random.Random(f"{seed}:{index}")  # each image of a multi-image call differs slightly
    canvas = Image.new("RGB", size, BACKGROUND)
    fitted = ImageOps.contain(subject, size, Image.Resampling.BILINEAR)
    canvas.paste(fitted, ((size[0] - fitted.width) // 2, (size[1] - fitted.height) // 2), fitted)
    lit = _apply_light(canvas, params.light_source, rng)
    _draw_caption(lit)
    return encode(lit, params.output_format, params.output_quality)


def render_all(subject: Image.Image, params: RelightParams) -> list[bytes]:
    """All number_of_images outputs for one call."""
    return [render(subject, params, index) for index in range(params.number_of_images)]
