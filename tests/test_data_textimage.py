import json

import numpy as np
from PIL import Image

from eve_vlm.data.llava import LlavaDataset
from eve_vlm.data.textimage import QUESTION, generate


def test_generate_is_deterministic_varied_and_loadable(tmp_path):
    generate(str(tmp_path / "a"), num=40, seed=7)
    generate(str(tmp_path / "b"), num=40, seed=7)
    for name in ("qa.jsonl", "captions.jsonl", "images/000013.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    qa = LlavaDataset(str(tmp_path / "a" / "qa.jsonl"), str(tmp_path / "a" / "images"))
    caps = [json.loads(line) for line in open(tmp_path / "a" / "captions.jsonl")]
    assert len(qa) == len(caps) == 40
    sizes, texts = set(), set()
    for i in range(40):
        rec = qa[i]
        assert rec["conversations"][0]["value"] == f"<image>\n{QUESTION}"
        assert rec["conversations"][1]["value"] == rec["text"] and f'"{rec["text"]}"' in caps[i]["conversations"][1]["value"]
        pixels = np.asarray(Image.open(rec["images"][0]))
        assert pixels.shape[:2] == tuple(reversed(rec["size"])) and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2
        sizes.add(tuple(rec["size"]))
        texts.add(rec["text"])
    assert len(sizes) >= 5 and len(texts) >= 30 and any(t.isdigit() for t in texts)
    other = tmp_path / "c"
    generate(str(other), num=5, seed=8)
    first = lambda d: (d / "qa.jsonl").read_text().splitlines()[0]  # noqa: E731
    assert first(other) != first(tmp_path / "a")
