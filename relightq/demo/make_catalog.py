"""Draw the demo catalog: six simple product shots as PNGs named by SKU.

Run `python -m relightq.demo.make_catalog`. Drawing uses Pillow primitives only, so the
images carry no licence questions; output is deterministic, so re-running changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SIZE = (512, 640)
SCALE = 2  # drawn at 2x and downsampled, which anti-aliases the hard-edged primitives
BACKGROUND = (243, 241, 237)
CATALOG_DIR = Path(__file__).parent / "catalog"
FLOOR = 560  # y of the surface products stand on, in output pixels

Box = tuple[int, int, int, int]
Painter = Callable[[ImageDraw.ImageDraw], None]


def _s(*values: float) -> tuple[int, ...]:
    return tuple(round(v * SCALE) for v in values)


def _box(x0: float, y0: float, x1: float, y1: float) -> Box:
    a, b, c, d = _s(x0, y0, x1, y1)
    return a, b, c, d


def _points(*xy: tuple[float, float]) -> list[tuple[int, int]]:
    return [(round(x * SCALE), round(y * SCALE)) for x, y in xy]


def mug(draw: ImageDraw.ImageDraw) -> None:
    """A red mug with a handle and a white band."""
    draw.ellipse(_box(330, 290, 420, 430), outline=(170, 40, 40), width=22 * SCALE)
    draw.rounded_rectangle(_box(130, 240, 360, 500), radius=28 * SCALE, fill=(196, 52, 48))
    draw.rectangle(_box(130, 380, 360, 410), fill=(250, 246, 240))
    draw.ellipse(_box(130, 222, 360, 262), fill=(150, 34, 32))
    draw.ellipse(_box(142, 228, 348, 256), fill=(92, 58, 40))  # coffee


def bottle(draw: ImageDraw.ImageDraw) -> None:
    """A teal glass bottle with a cap and a label."""
    draw.rectangle(_box(226, 110, 286, 150), fill=(40, 40, 48))
    draw.rectangle(_box(232, 150, 280, 220), fill=(38, 140, 140))
    draw.polygon(_points((232, 215), (280, 215), (336, 280), (176, 280)), fill=(38, 140, 140))
    draw.rounded_rectangle(_box(176, 270, 336, 540), radius=24 * SCALE, fill=(38, 140, 140))
    draw.rectangle(_box(176, 340, 336, 450), fill=(246, 236, 214))
    draw.rectangle(_box(176, 380, 336, 392), fill=(212, 96, 60))
    draw.rectangle(_box(196, 290, 210, 520), fill=(96, 190, 186))  # highlight


def shoe(draw: ImageDraw.ImageDraw) -> None:
    """A blue sneaker seen from the side."""
    upper = _points((90, 420), (110, 330), (200, 320), (260, 270), (320, 270), (330, 330))
    upper += _points((430, 370), (450, 420))
    draw.polygon(upper, fill=(44, 86, 170))
    draw.rounded_rectangle(_box(80, 410, 460, 450), radius=18 * SCALE, fill=(250, 250, 248))
    draw.rectangle(_box(80, 438, 460, 452), fill=(60, 60, 60))
    draw.polygon(_points((150, 400), (300, 340), (330, 360), (180, 410)), fill=(250, 250, 248))
    for i in range(4):
        x = 230 + i * 24
        draw.line(
            _points((x, 290 + i * 8), (x + 26, 310 + i * 8)), fill=(240, 240, 240), width=5 * SCALE
        )
    draw.rectangle(_box(96, 330, 116, 400), fill=(220, 80, 60))  # heel tab


def gift_box(draw: ImageDraw.ImageDraw) -> None:
    """A green gift box with a gold ribbon and bow."""
    draw.rectangle(_box(140, 300, 372, 520), fill=(46, 140, 90))
    draw.rectangle(_box(126, 260, 386, 310), fill=(38, 120, 76))
    draw.rectangle(_box(240, 260, 272, 520), fill=(232, 186, 60))
    draw.rectangle(_box(126, 276, 386, 296), fill=(232, 186, 60))
    draw.ellipse(_box(180, 200, 256, 262), outline=(232, 186, 60), width=14 * SCALE)
    draw.ellipse(_box(256, 200, 332, 262), outline=(232, 186, 60), width=14 * SCALE)
    draw.ellipse(_box(242, 240, 270, 266), fill=(214, 160, 40))


def lamp(draw: ImageDraw.ImageDraw) -> None:
    """A table lamp with a cream shade and a brass base."""
    draw.ellipse(_box(176, 500, 336, 540), fill=(176, 136, 64))
    draw.rectangle(_box(246, 320, 266, 520), fill=(150, 112, 50))
    draw.polygon(_points((196, 130), (316, 130), (376, 330), (136, 330)), fill=(244, 226, 186))
    draw.rectangle(_box(136, 318, 376, 332), fill=(214, 190, 140))
    draw.line(_points((300, 330), (300, 380)), fill=(120, 90, 40), width=3 * SCALE)  # pull cord


def backpack(draw: ImageDraw.ImageDraw) -> None:
    """An orange backpack with a front pocket and a top handle."""
    draw.arc(_box(216, 110, 296, 190), 180, 360, fill=(60, 50, 44), width=12 * SCALE)
    draw.rounded_rectangle(_box(106, 230, 146, 470), radius=16 * SCALE, fill=(60, 50, 44))
    draw.rounded_rectangle(_box(366, 230, 406, 470), radius=16 * SCALE, fill=(60, 50, 44))
    draw.rounded_rectangle(_box(136, 150, 376, 540), radius=70 * SCALE, fill=(226, 120, 40))
    draw.rounded_rectangle(_box(176, 370, 336, 510), radius=30 * SCALE, fill=(200, 100, 30))
    draw.line(_points((190, 390), (322, 390)), fill=(60, 50, 44), width=4 * SCALE)
    draw.line(_points((160, 230), (352, 230)), fill=(60, 50, 44), width=4 * SCALE)


PRODUCTS: dict[str, Painter] = {
    "SKU-MUG-001": mug,
    "SKU-BOTTLE-002": bottle,
    "SKU-SNEAKER-003": shoe,
    "SKU-GIFTBOX-004": gift_box,
    "SKU-LAMP-005": lamp,
    "SKU-BACKPACK-006": backpack,
}


def draw_product(painter: Painter) -> Image.Image:
    """One product standing on a common floor line, with a soft shadow, on a plain background."""
    big = (SIZE[0] * SCALE, SIZE[1] * SCALE)
    layer = Image.new("RGBA", big, (0, 0, 0, 0))
    painter(ImageDraw.Draw(layer))
    left, _, right, bottom = layer.getbbox() or (0, 0, big[0], big[1])
    floor = FLOOR * SCALE
    image = Image.new("RGB", big, BACKGROUND)
    shadow = Image.new("L", big, 0)
    ImageDraw.Draw(shadow).ellipse((left, floor - 14 * SCALE, right, floor + 18 * SCALE), fill=90)
    image.paste((200, 196, 190), (0, 0), shadow.filter(ImageFilter.GaussianBlur(12 * SCALE)))
    # Shift the drawing so every product sits on the same floor, whatever its height.
    image.paste(layer, (0, floor - bottom), layer)
    return image.resize(SIZE, Image.Resampling.LANCZOS)


def main(out_dir: Path = CATALOG_DIR) -> list[Path]:
    """Write every catalog PNG to out_dir and return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for sku, painter in PRODUCTS.items():
        path = out_dir / f"{sku}.png"
        # A 64-colour palette keeps each file small; the shapes are flat colours anyway.
        draw_product(painter).quantize(64, dither=Image.Dither.NONE).save(path, optimize=True)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in main():
        print(f"{path} ({path.stat().st_size // 1024} KB)")
