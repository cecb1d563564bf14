"""The Python API snippet of docs/serving.md, run verbatim against a tiny saved folder."""

import os
import re

from PIL import Image

from tiny import ROOT


def docs_snippet() -> str:
    with open(os.path.join(ROOT, "docs", "serving.md"), encoding="utf-8") as f:
        section = f.read().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_docs_snippet(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (320, 240), "red").save("photo.jpg")
    snippet = docs_snippet()
    assert "model.generate(**inputs" in snippet and "processor.batch_decode(out[:, inputs" in snippet
    scope = {"d": tiny_dir}
    exec(snippet, scope)
    answer = scope["answer"]
    assert isinstance(answer, list) and len(answer) == 1 and answer[0].strip()

    from eve_vlm.infer import GenerationOptions, encode, generate

    model, processor = scope["model"], scope["processor"]
    ours = generate(model, processor, [encode(processor, scope["messages"], scope["images"])],
                    GenerationOptions(max_new_tokens=64))
    assert ours[0].text == answer[0]  # the engine decodes exactly what the plain API does
