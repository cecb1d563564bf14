"""OCR with Tesseract (the `tesseract` binary through `pytesseract`): words with boxes and
confidences, grouped into lines.

Page segmentation mode 11 ("sparse text") is the default: it finds scattered text in photos and,
unlike the block modes, does not read shapes as letters (psm 6 reads easy-VQA triangles as "A"
with confidence 96). Small images are upscaled first: Tesseract wants letters ~20+ px tall.
"""

import os
import shutil

from PIL import Image

from ..errors import EveError
from ..extras import needs
from .experts import Expert

INSTALL = "install Tesseract: apt-get install tesseract-ocr (Debian/Ubuntu) or brew install tesseract (macOS)"


class TesseractOCR(Expert):
    name = "ocr"
    version = "tesseract-1"
    cost = 0.21  # measured: 4.8 photos / scans (300-1000 px) a second on one core (docs/captioning.md)

    def __init__(self, lang: str = "eng", psm: int = 11, min_conf: float = 50, min_side: int = 150,
                 max_side: int = 2000, timeout: float = 60):
        with needs("caption", "the ocr expert"):
            import pytesseract
        if shutil.which(pytesseract.pytesseract.tesseract_cmd) is None:
            raise EveError(f"the ocr expert needs the tesseract binary, not found on PATH: {INSTALL}")
        # Several experts run in parallel threads; Tesseract's own OpenMP threads only contend.
        os.environ.setdefault("OMP_THREAD_LIMIT", "1")
        self.tesseract = pytesseract
        self.lang, self.psm, self.min_conf = lang, int(psm), float(min_conf)
        self.min_side, self.max_side, self.timeout = int(min_side), int(max_side), float(timeout)
        self.version = f"tesseract-{pytesseract.get_tesseract_version()}-psm{self.psm}"

    def __call__(self, images: list) -> list[dict]:
        return [self._one(image) for image in images]

    def _one(self, image: Image.Image) -> dict:
        gray = image.convert("L")
        short, long = min(gray.size), max(gray.size)
        scale = min(max(1.0, self.min_side / short), self.max_side / long)
        if scale != 1:
            gray = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))),
                               Image.LANCZOS)
        data = self.tesseract.image_to_data(gray, lang=self.lang, config=f"--psm {self.psm}", timeout=self.timeout,
                                            output_type=self.tesseract.Output.DICT)
        words, lines = [], {}
        for i, text in enumerate(data["text"]):
            conf = float(data["conf"][i])
            if not text.strip() or conf < self.min_conf or not any(c.isalnum() for c in text):
                continue
            x, y, w, h = (data[k][i] / scale for k in ("left", "top", "width", "height"))
            words.append({"text": text.strip(), "conf": round(conf, 1),
                          "box": [round(x), round(y), round(x + w), round(y + h)]})
            lines.setdefault((data["block_num"][i], data["par_num"][i], data["line_num"][i]), []).append(text.strip())
        return {"words": words, "lines": [" ".join(ws) for ws in lines.values()]}

    def describe(self, facts: dict) -> list[str]:
        lines = facts.get("lines") or []
        if not lines:
            return []
        quoted = " and ".join(f'"{line}"' for line in lines)
        return [f"The text {quoted} is written in the image."]
