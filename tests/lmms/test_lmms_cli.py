"""A real `lmms-eval --model eve` run (its CLI in a subprocess, offline, `--model eve` found through
the installed entry point) on two local tasks, against `eve eval` on the same records and model."""

import json
import os
import subprocess
import sys

import pytest
from lmms_common import mean_loss
from tiny import eve_eval, save_images

from eve_vlm.eval.tasks import Task
from eve_vlm.infer import load

IMAGES = ["1.png", "2.png", "3.png", "4.png"]
QUESTIONS = ["What colour is it?", "What shape is it?", "Is it red?", "How many are there?"]
CHOICES = ["red", "blue", "green"]
EVE_TASK = Task.load("jsonl-vqa")  # its prompt and reply cap are mirrored by the lmms-eval task

# JSON strings are YAML scalars: the prompt's newline and quotes survive as they are.
VQA_YAML = """task: eve_local_vqa
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: {prompt}
doc_to_target: answer
generation_kwargs: {{max_new_tokens: {max_new_tokens}, until: []}}
metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
"""
MCQ_YAML = """task: eve_local_mcq
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list: [{{metric: acc}}]
"""
UTILS = """from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]
"""


def _write_records(path, folder, answers, labels):
    with open(path, "w") as f:
        for name, question, answer, label in zip(IMAGES, QUESTIONS, answers, labels):
            f.write(json.dumps({"id": name, "image": str(folder / name), "question": question, "answer": answer,
                                "choices": CHOICES, "label": label}) + "\n")


def _eve_eval(model_dir, data, out) -> dict:
    eve_eval("--model", model_dir, "--task", "jsonl-vqa", "--data", data, "--output", out, "--batch-size", 2,
             "--device", "cpu")
    return json.loads((out / "jsonl-vqa.json").read_text())


def _lmms_eval(model_dir, tasks, out, cwd):
    """Run the CLI; return (results, {task: samples by doc id}). It exits 0 even when the
    evaluation failed, so the results file is the proof that it ran."""
    exe = os.path.join(os.path.dirname(sys.executable), "lmms-eval")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "HF_HOME": str(cwd / "hf"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [exe, "eval", "--model", "eve", "--model_args", f"pretrained={model_dir},dtype=fp32",
         "--tasks", "eve_local_vqa,eve_local_mcq", "--include_path", str(tasks), "--batch_size", "2",
         "--device", "cpu", "--output_path", str(out), "--log_samples"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    found = list(out.glob("*/*_results.json"))
    assert found, f"no results (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    samples = {}
    for task in ("eve_local_vqa", "eve_local_mcq"):
        (path,) = out.glob(f"*/*_samples_{task}.jsonl")
        samples[task] = {s["doc_id"]: s for s in map(json.loads, path.read_text().splitlines())}
    return json.loads(found[0].read_text())["results"], samples


def _write_tasks(folder, data) -> None:
    folder.mkdir()
    prompt = json.dumps(EVE_TASK.prompt.replace("{question}", "{{question}}"))  # eve's template, in Jinja
    (folder / "eve_local_vqa.yaml").write_text(VQA_YAML.format(data=data, prompt=prompt,
                                                               max_new_tokens=EVE_TASK.max_new_tokens))
    (folder / "eve_local_mcq.yaml").write_text(MCQ_YAML.format(data=data))
    (folder / "utils.py").write_text(UTILS)


def _gold(said: list[str], losses: list[list[float]]) -> tuple[list[str], list[int], float]:
    """Answers and choice labels that make neither score trivially 0 or 1: every other one-line
    reply is the gold answer, and the lowest-loss choice is the gold label of every other record.
    Returns them with the exact-match score they give."""
    one_line = [i for i, s in enumerate(said) if s.strip() and EVE_TASK.clean(s) == s.strip()]
    right = one_line[::2]
    answers = [EVE_TASK.clean(s) if i in right else "not what it said" for i, s in enumerate(said)]
    labels = [(ls.index(min(ls)) + i % 2) % len(CHOICES) for i, ls in enumerate(losses)]
    return answers, labels, len(right) / len(said)


def test_lmms_eval_cli_scores_like_eve_eval(eve_toy_dir, tmp_path):
    save_images(tmp_path, *IMAGES)
    data = tmp_path / "data.jsonl"
    _write_records(data, tmp_path, ["?"] * len(IMAGES), [0] * len(IMAGES))
    said = [p["prediction"] for p in _eve_eval(eve_toy_dir, data, tmp_path / "probe")["predictions"]]
    model, processor = load(eve_toy_dir, device="cpu")
    # a multiple_choice continuation is the choice after lm-eval's target delimiter " "
    losses = [[mean_loss(model, processor, q, str(tmp_path / name), " " + c) for c in CHOICES]
              for name, q in zip(IMAGES, QUESTIONS)]
    answers, labels, score = _gold(said, losses)
    assert 0 < score < 1
    _write_records(data, tmp_path, answers, labels)

    eve = _eve_eval(eve_toy_dir, data, tmp_path / "eve")
    _write_tasks(tmp_path / "tasks", data)
    results, samples = _lmms_eval(eve_toy_dir, tmp_path / "tasks", tmp_path / "out", tmp_path)

    # the real equality: the same greedy reply to every record
    replies = [samples["eve_local_vqa"][i]["filtered_resps"] for i in range(len(IMAGES))]
    assert replies == [p["prediction"] for p in eve["predictions"]]
    assert results["eve_local_vqa"]["exact_match,none"] == eve["metrics"]["exact_match"] == score
    # multiple choice: lmms-eval picks the lowest loss; the adapter's are the mean per-token losses
    for i, ls in enumerate(losses):
        got = [float(loss) for loss, _ in samples["eve_local_mcq"][i]["filtered_resps"]]
        assert got == pytest.approx(ls, abs=1e-4)
    assert results["eve_local_mcq"]["acc,none"] == 0.5
