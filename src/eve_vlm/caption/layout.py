"""Layout and colour expert: image size and aspect ratio, the background colour, the foreground's
colours, where it lies, how many separate regions it has, and the shape of a lone region.

Colours are named by the nearest reference colour in CIELAB (perceptual distance), from a palette
of basic colour terms. The background is the dominant colour of the image border; the foreground
is every pixel perceptibly different from it (Delta E > 20). Images without a dominant border colour
(most photos) get the dominant colours of the whole image instead.
"""

import numpy as np
from PIL import Image

from ..extras import needs
from .experts import Expert

# name -> reference sRGB colours (several where a name covers a range)
PALETTE = {
    "white": [(255, 255, 255)], "black": [(0, 0, 0)], "gray": [(128, 128, 128), (170, 170, 170), (90, 90, 90)],
    "red": [(255, 0, 0), (200, 30, 30)], "orange": [(255, 140, 0), (240, 130, 20)],
    "yellow": [(255, 255, 0), (240, 210, 40)], "green": [(0, 255, 0), (0, 128, 0), (30, 140, 50)],
    "dark green": [(10, 70, 30), (0, 100, 0)], "teal": [(0, 128, 128)], "cyan": [(0, 255, 255)],
    "blue": [(0, 0, 255), (30, 60, 200)], "light blue": [(170, 210, 240), (173, 216, 230)], "navy": [(0, 0, 128)],
    "purple": [(128, 0, 128), (120, 50, 160)], "magenta": [(255, 0, 255)], "pink": [(255, 192, 203), (240, 170, 200)],
    "brown": [(165, 42, 42), (139, 69, 19)], "beige": [(245, 245, 220), (235, 225, 200)],
}
_NAMES = [name for name, refs in PALETTE.items() for _ in refs]
FOREGROUND_DELTA = 20.0  # Delta E above which a pixel is not background (~ clearly visible)
MAX_SIDE = 256  # analysis resolution: colours and regions need no more
MIN_REGION = 0.001  # regions under this fraction of the image are noise
MIN_COLOR_SHARE = 0.15  # a colour named as "main" covers at least this much
CORE = 0.8  # foreground pixels this close to its farthest Delta E from the background are not edge blends


def _lab(rgb: np.ndarray) -> np.ndarray:
    with needs("caption", "the layout expert"):
        from skimage.color import rgb2lab

    return rgb2lab(rgb.reshape(-1, 1, 3).astype(np.float64) / 255).reshape(-1, 3)


_PALETTE_LAB = _lab(np.array([ref for refs in PALETTE.values() for ref in refs]))


def color_name(rgb) -> str:
    distances = np.linalg.norm(_PALETTE_LAB - _lab(np.asarray(rgb)), axis=1)
    return _NAMES[int(distances.argmin())]


def _bins(pixels: np.ndarray) -> np.ndarray:
    return (pixels >> 4).astype(np.int32) @ np.array([256, 16, 1])


def dominant_colors(pixels: np.ndarray, min_share: float = MIN_COLOR_SHARE) -> list[dict]:
    """Named colours of an [N, 3] uint8 array that cover at least `min_share` of it, largest first.
    Pixels are binned at 4 bits per channel and each bin is named by its mean, so antialiased
    edges, spread thin over many bins, do not outvote the flat colour they blend from."""
    _, inverse, counts = np.unique(_bins(pixels), return_inverse=True, return_counts=True)
    top = np.argsort(-counts)[:16]
    means = np.stack([pixels[inverse == b].mean(0) for b in top])
    shares = {}
    for name, count in zip((color_name(m) for m in means), counts[top]):
        shares[name] = shares.get(name, 0) + count / len(pixels)
    return [{"name": n, "share": round(float(s), 3)}
            for n, s in sorted(shares.items(), key=lambda kv: -kv[1]) if s >= min_share]


def _position(box) -> str:
    x = (box[0] + box[2]) / 2
    y = (box[1] + box[3]) / 2
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else ""
    col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
    return f"{row} {col}".strip() or "center"


def _shape(region, aspect: float) -> str | None:
    """The shape of one solid region from how much of its bounding box it fills: a rectangle 1,
    an ellipse pi/4 = 0.79, a triangle 0.5. Pixelated edges push small shapes up (measured on
    1,500 easy-VQA images: triangles 0.50-0.69, circles 0.74-0.90, rectangles 0.94-1)."""
    if region.solidity < 0.85 or region.area < 20:
        return None
    if region.extent >= 0.92:
        return "rectangle"
    if region.extent >= 0.715:
        return "circle" if 0.85 < aspect < 1.18 else "ellipse"
    if region.extent >= 0.4:
        return "triangle"
    return None


class LayoutExpert(Expert):
    name = "layout"
    version = "layout-1"
    cost = 0.007  # measured: ~150 photos a second on one core

    def __call__(self, images: list) -> list[dict]:
        return [self._one(image) for image in images]

    def _one(self, image: Image.Image) -> dict:
        with needs("caption", "the layout expert"):
            from skimage.measure import label, regionprops

        width, height = image.size
        facts = {"width": width, "height": height, "aspect_ratio": round(width / height, 2),
                 "orientation": "square" if 0.9 <= width / height <= 1.1 else
                 "landscape" if width > height else "portrait"}
        small = image.convert("RGB")
        small.thumbnail((MAX_SIDE, MAX_SIDE), Image.BOX)
        rgb = np.asarray(small)
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
        bins = _bins(border)
        counts = np.bincount(bins)
        if counts.max() < 0.6 * len(border):  # no uniform background
            facts["colors"] = dominant_colors(rgb.reshape(-1, 3))
            return facts
        background = np.median(border[bins == counts.argmax()], axis=0)
        delta = np.linalg.norm(_lab(rgb) - _lab(background), axis=1).reshape(rgb.shape[:2])
        mask = delta > FOREGROUND_DELTA
        facts["background"] = color_name(background)
        regions = [r for r in regionprops(label(mask, connectivity=2)) if r.area >= MIN_REGION * mask.size]
        if not regions:
            return facts
        keep = np.zeros_like(mask)
        for r in regions:
            keep[tuple(r.coords.T)] = True
        ys, xs = np.nonzero(keep)
        h, w = mask.shape
        box = [round(v, 3) for v in (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)]
        # Antialiased edges are blends of the background and the foreground: name only the core
        # pixels, those (nearly) as far from the background as the foreground gets.
        core = keep & (delta >= CORE * np.percentile(delta[keep], 95))
        foreground = {"colors": dominant_colors(rgb[core]), "box": box, "position": _position(box),
                      "coverage": round(float(keep.mean()), 3), "regions": len(regions)}
        largest = max(regions, key=lambda r: r.area)
        if largest.area >= 0.9 * keep.sum():
            y0, x0, y1, x1 = largest.bbox
            shape = _shape(largest, (x1 - x0) / (y1 - y0))
            if shape:
                foreground["shape"] = shape
        facts["foreground"] = foreground
        return facts

    def describe(self, facts: dict) -> list[str]:
        w, h = facts["width"], facts["height"]
        kind = {"square": "A square", "landscape": "A wide", "portrait": "A tall"}[facts["orientation"]]
        sentences = [f"{kind} image, {w}x{h} pixels."]
        if "colors" in facts:
            names = [c["name"] for c in facts["colors"]]
            if names:
                sentences.append(f"Its main color{'s are' if len(names) > 1 else ' is'} {_join(names)}.")
            return sentences
        fg = facts.get("foreground")
        if fg is None:
            sentences.append(f"A plain {facts['background']} image.")
            return sentences
        colors = _join([c["name"] for c in fg["colors"]]) or "multicolored"
        background = _a(facts["background"]) + " background"
        where = {"top": "at the top", "bottom": "at the bottom", "left": "on the left",
                 "right": "on the right"}.get(fg["position"], f"in the {fg['position']}") + " of the image"
        if "shape" in fg:
            sentences.append(f"{_a(colors).capitalize()} {fg['shape']} on {background}, {where}.")
        else:
            count = "One" if fg["regions"] == 1 else str(fg["regions"])
            sentences.append(f"{count} {colors} region{'s' if fg['regions'] > 1 else ''} on {background}, {where}.")
        return sentences


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(words: list[str]) -> str:
    return " and ".join(filter(None, [", ".join(words[:-1]), words[-1]])) if words else ""
