"""Tasks, scoring, resume, failures, comparison and the endpoint mode of `eve eval`."""

import json

import pytest
from PIL import Image

from eve_vlm.errors import EveError
from eve_vlm.eval import Task, evaluate
from tiny import Scripted, eve_eval, save_images, serve_in_thread, write_jsonl

VQA_ROWS = [
    {"id": "q1", "image": "1.png", "question": "What colour?", "answer": "Red", "question_type": "color"},
    {"id": "q2", "image": "2.png", "question": "What shape?", "answer": "circle", "question_type": "shape"},
    {"id": "q3", "image": "1.png", "question": "How many?", "answers": ["two", "2", "3"], "question_type": "count"},
    {"id": "q4", "image": "2.png", "question": "Is it big?", "answer": "yes", "question_type": "yes_no"},
]


def vqa_task(tmp_path, rows=VQA_ROWS) -> Task:
    save_images(tmp_path, "1.png", "2.png")
    return Task.load("jsonl-vqa", data=write_jsonl(tmp_path / "qa.jsonl", rows))


def test_scores_every_prediction_and_groups(tmp_path):
    task = vqa_task(tmp_path)
    bot = Scripted({"colour": "The red.", "shape": "square", "many": "Two", "big": "yes\nbecause it is"})
    res = evaluate(task, bot, str(tmp_path / "out"), batch_size=3)
    assert [len(c) for c in bot.calls] == [3, 1]
    assert "What colour?\nAnswer the question using a single word or phrase." in bot.calls[0]
    by_id = {p["id"]: p for p in res["predictions"]}
    assert by_id["q1"]["answer"] == "The red." and by_id["q1"]["scores"]["exact_match"] == 1.0
    assert by_id["q4"]["answer"] == "yes"  # first_line post-processing
    assert by_id["q3"]["scores"] == {"vqa_accuracy": pytest.approx(4 / 9), "exact_match": 1.0}
    assert res["metrics"] == {"count": 4, "vqa_accuracy": pytest.approx((1 + 0 + 4 / 9 + 1) / 4), "exact_match": 0.75}
    assert res["by_group"]["shape"] == {"count": 1, "vqa_accuracy": 0.0, "exact_match": 0.0}
    assert set(res["by_group"]) == {"color", "shape", "count", "yes_no"}
    saved = json.loads((tmp_path / "out" / "jsonl-vqa.json").read_text())
    assert saved["predictions"] == res["predictions"] and saved["settings"]["mode"] == "scripted"
    assert "| question_type=shape | 1 | 0.0 | 0.0 |" in (tmp_path / "out" / "jsonl-vqa.md").read_text()


def test_bad_records_are_scored_wrong_and_listed(tmp_path):
    save_images(tmp_path, "1.png")
    rows = [
        {"id": "ok", "image": "1.png", "question": "Which animal?", "choices": ["cat", "dog"], "answer": "B"},
        {"id": "gone", "image": "missing.png", "question": "Which?", "choices": ["cat", "dog"], "answer": 0},
        "{not json",
        {"id": "noq", "image": "1.png", "choices": ["cat", "dog"], "answer": "A"},
    ]
    task = Task.load("jsonl-mcq", data=write_jsonl(tmp_path / "mcq.jsonl", rows))
    res = evaluate(task, Scripted({"animal": "The answer is (B)"}), str(tmp_path / "out"))
    assert res["num_records"] == 4 and res["metrics"]["mcq"] == 0.25
    errors = {e["id"]: e["error"] for e in res["errors"]}
    assert set(errors) == {"gone", "line-3", "noq"}
    assert "missing.png" in errors["gone"] and "bad record" in errors["line-3"] and "no question" in errors["noq"]
    assert all(p["scores"]["mcq"] == 0.0 for p in res["predictions"] if p["error"])
    save_images(tmp_path, "missing.png")  # fixed: a rerun retries the failed record only
    bot = Scripted({"Which?": "A"})
    res = evaluate(task, bot, str(tmp_path / "out"))
    assert bot.calls == [[task.build_prompt(rows[1])]] and res["metrics"]["mcq"] == 0.5


def test_resume_skips_done_ids_and_refuses_other_settings(tmp_path):
    task, out = vqa_task(tmp_path), str(tmp_path / "out")
    evaluate(task, Scripted({}), out, limit=2)
    bot = Scripted({})
    evaluate(task, bot, out, limit=3)
    assert bot.calls == [[task.build_prompt({"question": "How many?"})]]  # only the new record
    preds = tmp_path / "out" / "jsonl-vqa.predictions.jsonl"
    lines = preds.read_text().splitlines()
    preds.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:15])  # killed while writing the last line
    bot = Scripted({})
    res = evaluate(task, bot, out)
    assert len(bot.calls[0]) == 2 and res["num_records"] == 4 and res["timings"]["predicted_this_run"] == 2
    with pytest.raises(EveError, match="other settings"):
        evaluate(task, Scripted({}, settings={"mode": "scripted", "model": "another"}), out)


def test_duplicate_ids_and_unknown_tasks_are_input_errors(tmp_path):
    with pytest.raises(EveError, match="more than once"):
        vqa_task(tmp_path, VQA_ROWS + VQA_ROWS[:1]).records(str(tmp_path))
    with pytest.raises(EveError, match="no task"):
        Task.load("no-such-task")
    with pytest.raises(EveError, match="--data"):
        Task.load("jsonl-vqa").records(str(tmp_path))
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: {jsonl: x.jsonl}\nprompt: '{question}'\nmetrics: [bleu]\n")
    with pytest.raises(EveError, match="unknown"):
        Task.load(str(bad))


def test_user_task_file_resolves_paths_against_itself(tmp_path):
    save_images(tmp_path, "1.png", "2.png")
    write_jsonl(tmp_path / "qa.jsonl", VQA_ROWS)
    (tmp_path / "mine.yaml").write_text(
        "source: {jsonl: qa.jsonl}\nprompt: 'Q: {question} ({question_type})'\nmetrics: [exact_match]\n"
        "postprocess: [lower]\ngroup_by: null\n")
    bot = Scripted({"colour": "RED"})
    res = evaluate(Task.load(str(tmp_path / "mine.yaml")), bot, str(tmp_path / "out"))
    assert bot.calls[0][0] == "Q: What colour? (color)" and res["task"] == "mine"
    assert res["predictions"][0]["answer"] == "red" and res["by_group"] == {}


def test_compare_writes_table_and_chart(tmp_path):
    task = vqa_task(tmp_path)
    evaluate(task, Scripted({"colour": "red", "shape": "circle"}), str(tmp_path / "a"))
    evaluate(task, Scripted({"colour": "red", "shape": "circle", "big": "yes"}), str(tmp_path / "b"))
    save_images(tmp_path, "3.png")
    rows = [{"id": "m", "image": "3.png", "question": "Which?", "choices": ["x", "y"], "answer": "A"}]
    evaluate(Task.load("jsonl-mcq", data=write_jsonl(tmp_path / "m.jsonl", rows)), Scripted({"Which": "A"}),
             str(tmp_path / "a"))
    eve_eval("--compare", tmp_path / "a", tmp_path / "b", "--output", tmp_path / "cmp")
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| task | subset | metric | a | b |" in table
    assert "| jsonl-vqa | all | vqa_accuracy | 50.0 | 75.0 (+25.0) |" in table
    assert "| jsonl-vqa | yes_no | vqa_accuracy | 0.0 | 100.0 (+100.0) |" in table
    assert "| jsonl-mcq | all | mcq | 100.0 | – |" in table
    with Image.open(tmp_path / "cmp" / "compare.png") as chart:
        assert chart.format == "PNG" and chart.width > 300
    with pytest.raises(EveError, match="no evaluation results"):
        eve_eval("--compare", tmp_path / "a", tmp_path / "cmp")


def test_easyvqa_and_textimage_end_to_end(eve_toy_dir, tmp_path, capsys):
    args = ("--model", eve_toy_dir, "--task", "easyvqa", "--task", "textimage", "--limit", 5, "--max-new-tokens", 4)
    eve_eval(*args, "--batch-size", 3, "--output", tmp_path / "run")
    assert "## easyvqa · " in capsys.readouterr().out
    res = json.loads((tmp_path / "run" / "easyvqa.json").read_text())
    assert res["num_records"] == 5 and not res["errors"]
    assert set(res["by_group"]) <= {"color", "shape", "yes_no_color", "yes_no_shape"}
    assert res["settings"]["mode"] == "direct" and res["settings"]["max_new_tokens"] == 4
    assert all(isinstance(p["prediction"], str) and p["answers"] for p in res["predictions"])
    text = json.loads((tmp_path / "run" / "textimage.json").read_text())
    assert text["num_records"] == 5 and set(text["metrics"]) == {"count", "anls", "exact_match"}
    # a rerun finds everything done; batch size 1 decodes exactly what batches of 3 did
    eve_eval(*args, "--batch-size", 3, "--output", tmp_path / "run")
    again = json.loads((tmp_path / "run" / "easyvqa.json").read_text())
    assert again["timings"]["predicted_this_run"] == 0 and again["predictions"] == res["predictions"]
    eve_eval(*args[:4], "--limit", 5, "--max-new-tokens", 4, "--batch-size", 1, "--output", tmp_path / "one")
    one = json.loads((tmp_path / "one" / "easyvqa.json").read_text())
    assert [p["prediction"] for p in one["predictions"]] == [p["prediction"] for p in res["predictions"]]


def test_endpoint_mode_scores_like_direct_mode(eve_toy_dir, tmp_path):
    """`eve serve`'s app on 127.0.0.1: the same task through the endpoint gives the same replies and scores."""
    pytest.importorskip("openai")
    pytest.importorskip("eve_vlm.serve.app")
    from eve_vlm.infer import load
    from eve_vlm.serve import create_app

    save_images(tmp_path, "1.png", "2.png")
    rows = VQA_ROWS + [{"id": "q5", "image": "nothere.png", "question": "?", "answer": "x"}]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    common = ("--task", "easyvqa", "--task", "jsonl-vqa", "--data", data, "--limit", 5, "--max-new-tokens", 5,
              "--batch-size", 3)
    eve_eval("--model", eve_toy_dir, *common, "--output", tmp_path / "direct")
    model, processor = load(eve_toy_dir)
    with serve_in_thread(create_app(model, processor, "tiny", api_key="secret")) as url:
        eve_eval("--endpoint", url + "/v1", "--api-key", "secret", *common, "--output", tmp_path / "endpoint")
    for task in ("easyvqa", "jsonl-vqa"):
        direct = json.loads((tmp_path / "direct" / f"{task}.json").read_text())
        served = json.loads((tmp_path / "endpoint" / f"{task}.json").read_text())
        assert served["model"] == "tiny" and served["settings"]["mode"] == "endpoint"
        assert [p["prediction"] for p in served["predictions"]] == [p["prediction"] for p in direct["predictions"]]
        assert served["metrics"] == direct["metrics"] and served["by_group"] == direct["by_group"]
        assert [e["id"] for e in served["errors"]] == [e["id"] for e in direct["errors"]]
    assert [e["id"] for e in direct["errors"]] == ["q5"]  # the missing image, in both modes
    assert len({p["prediction"] for p in direct["predictions"]}) > 2  # the replies differ: the match is not trivial
