"""Small real images made on the fly for tests."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


def product_png(width: int = 256, height: int = 320) -> bytes:
    """A PNG of a simple 'product' on a light background."""
    image = Image.new("RGB", (width, height), (235, 235, 230))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(200, 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
