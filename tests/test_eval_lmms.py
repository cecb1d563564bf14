"""The lmms-eval adapter: its request handling against lmms-eval's model interface (a stub of the
base class when lmms-eval is not installed), and, where an `lmms-eval` command is available
(on PATH or in $EVE_LMMS_EVAL), a real `lmms-eval --model eve` run on local tasks."""

import dataclasses
import glob
import importlib
import json
import os
import shutil
import subprocess
import sys
import types

import pytest
import torch
from PIL import Image

from tiny import save_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stub_lmms_eval(monkeypatch):
    """The two names the adapter imports, shaped like lmms-eval 0.7.3's."""

    class lmms:  # noqa: N801 -- lmms_eval.api.model.lmms: sets the task_dict the evaluator fills
        is_simple = True

        def __init__(self):
            self._rank, self._world_size, self.task_dict = 0, 1, {}

    @dataclasses.dataclass
    class GenerationResult:
        text: object
        token_counts: object = None

    modules = {name: types.ModuleType(name) for name in ("lmms_eval", "lmms_eval.api", "lmms_eval.api.model",
                                                         "lmms_eval.api.instance")}
    modules["lmms_eval.api.model"].lmms = lmms
    modules["lmms_eval.api.instance"].GenerationResult = GenerationResult
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture
def adapter(monkeypatch, eve_toy_dir, tmp_path):
    try:
        importlib.import_module("lmms_eval.api.model")
    except ImportError:
        _stub_lmms_eval(monkeypatch)
    monkeypatch.delitem(sys.modules, "eve_vlm.integrations.lmms_eval", raising=False)
    module = importlib.import_module("eve_vlm.integrations.lmms_eval")  # dropped again at teardown
    lm = module.EveLmms(pretrained=eve_toy_dir, batch_size="2", max_batch_size=None, device="cpu")
    save_images(tmp_path, "1.png", "2.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    lm.task_dict = {"t": {"test": [{"image": str(tmp_path / f"{name}.png"), "q": q} for name, q in
                                   (("1", "What colour is it?"), ("2", "What shape?"), ("bad", "Why?"))]}}
    return lm


def _visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def _request(*args):
    return types.SimpleNamespace(args=args)


def test_generate_until_matches_eve_eval_and_survives_bad_images(adapter):
    from eve_vlm.infer.predictors import DirectPredictor

    gen = {"max_new_tokens": 5, "until": [], "do_sample": False, "temperature": 0}
    requests = [_request(doc["q"], dict(gen), _visual, i, "t", "test")
                for i, doc in enumerate(adapter.task_dict["t"]["test"])]
    replies = adapter.generate_until(requests)
    direct = DirectPredictor.__new__(DirectPredictor)  # same weights: reuse the adapter's model
    direct.model, direct.processor = adapter.model, adapter.processor
    docs = adapter.task_dict["t"]["test"][:2]
    assert replies[:2] == direct.predict([(d["q"], d["image"]) for d in docs], 5)
    assert replies[2] == ""  # unreadable image: answered "" (scored wrong), the rest still run
    # a task that places its image itself with <image> gets the same prompt
    assert adapter.generate_until([_request("<image>\n" + docs[0]["q"], dict(gen), _visual, 0, "t", "test")]) == \
        replies[:1]


def test_loglikelihood_is_the_mean_loss_of_the_continuation(adapter):
    from eve_vlm.infer.predictors import user_message
    from eve_vlm.infer import encode

    doc = adapter.task_dict["t"]["test"][0]
    (ab_loss, _), (a_loss, a_greedy) = [r.text for r in adapter.loglikelihood(
        [_request(doc["q"], cont, _visual, 0, "t", "test") for cont in ("ab", "a")])]
    prompt = encode(adapter.processor, user_message(doc["q"], {"type": "image"}), [doc["image"]])
    a, b = adapter.processor.tokenizer("ab", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = adapter.model(input_ids=torch.tensor([prompt.input_ids + [a]]),
                             pixel_values=prompt.pixel_values).logits[0, -2:].log_softmax(-1)
    assert a_loss == pytest.approx(-logp[0, a].item(), abs=1e-4)
    assert ab_loss == pytest.approx(-(logp[0, a].item() + logp[1, b].item()) / 2, abs=1e-4)  # mean per token
    assert a_greedy == (logp[0].argmax().item() == a)


TASKS = {
    "eve_local_vqa.yaml": """
task: eve_local_vqa
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: "{{{{question}}}}\\nAnswer the question using a single word or phrase."
doc_to_target: answer
generation_kwargs: {{max_new_tokens: 4, until: ["ASSISTANT:"]}}
metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
""",
    "eve_local_mcq.yaml": """
task: eve_local_mcq
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list: [{{metric: acc}}]
""",
    "utils.py": """
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]
""",
}


def test_lmms_eval_cli_runs_eve_on_local_tasks(eve_toy_dir, tmp_path):
    """`lmms-eval --model eve` with eve-vlm registered through the `lmms_eval.models` entry point
    (a dist-info on PYTHONPATH stands in for the installed package), on two local tasks: no download."""
    exe = os.environ.get("EVE_LMMS_EVAL") or shutil.which("lmms-eval")
    if not exe:
        pytest.skip("lmms-eval is not installed (set EVE_LMMS_EVAL to its command to run this test)")
    save_images(tmp_path, "1.png", "2.png")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"image": str(tmp_path / f"{i}.png"), "question": q, "answer": a,
                                        "choices": ["red", "blue"], "label": label}) + "\n"
                            for i, q, a, label in ((1, "What colour?", "red", 0), (2, "Which colour?", "blue", 1))))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, text in TASKS.items():
        (tasks / name).write_text(text.format(data=data))
    dist = tmp_path / "site" / "eve_vlm_test-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: eve-vlm-test\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[lmms_eval.models]\neve = eve_vlm.integrations:lmms_eval_manifest\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{os.path.join(ROOT, 'src')}",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    proc = subprocess.run(
        [exe, "--model", "eve", "--model_args", f"pretrained={eve_toy_dir},dtype=fp32", "--tasks",
         "eve_local_vqa,eve_local_mcq", "--include_path", str(tasks), "--batch_size", "2", "--device", "cpu",
         "--output_path", str(out), "--log_samples"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    found = glob.glob(str(out / "**" / "*results*.json"), recursive=True)
    # lmms-eval exits 0 even when the evaluation failed: the results file is the proof
    assert found, f"no results (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    results = json.loads(open(found[0]).read())["results"]
    assert 0 <= results["eve_local_vqa"]["exact_match,none"] <= 1
    assert 0 <= results["eve_local_mcq"]["acc,none"] <= 1
    samples = glob.glob(str(out / "**" / "*eve_local_vqa*.jsonl"), recursive=True)
    assert samples and len(open(samples[0]).read().splitlines()) == 2
    # multiple choice: lmms-eval picks the argmin, so the adapter must return losses (> 0)
    for line in open(glob.glob(str(out / "**" / "*eve_local_mcq*.jsonl"), recursive=True)[0]):
        sample = json.loads(line)
        losses = [float(loss) for loss, _ in sample["filtered_resps"]]
        assert min(losses) > 0 and sample["acc"] == float(losses.index(min(losses)) == int(sample["target"]))
