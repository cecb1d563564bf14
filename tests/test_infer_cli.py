"""`eve chat` and `eve infer`: streaming to the terminal, multi-turn sessions, batched JSONL
inference that resumes and survives bad records."""

import json
import subprocess
import sys

from eve_vlm.infer import GenerationOptions, encode, generate
from eve_vlm.infer.batch import run
from eve_vlm.infer.chat import Chat, interactive
from tiny import CLI, ROOT, env, parse_cli, png


def test_chat_one_prompt_streams_the_answer(tiny_dir, tmp_path, capsys):
    (tmp_path / "red.png").write_bytes(png("red"))
    args = parse_cli("chat", "--model", tiny_dir, "--image", str(tmp_path / "red.png"), "--max-new-tokens", "6",
                     "What is it?")
    args.handler(args)
    printed = capsys.readouterr().out
    from eve_vlm.infer import load

    model, processor = load(tiny_dir)
    msg = [{"role": "user", "content": [{"type": "image", "image": str(tmp_path / "red.png")},
                                        {"type": "text", "text": "What is it?"}]}]
    expected = generate(model, processor, [encode(processor, msg)], GenerationOptions(max_new_tokens=6))[0].text
    assert printed == expected + "\n"


def test_interactive_session_keeps_turns_and_images(tiny, tmp_path, capsys):
    (tmp_path / "blue.png").write_bytes(png("blue"))
    chat = Chat(*tiny, GenerationOptions(max_new_tokens=4))
    lines = iter(["/image " + str(tmp_path / "blue.png"), "What color?", "/image /no/such.png", "And now?",
                  "/reset", "Hi", "/exit", "never read"])
    interactive(chat, read=lambda _: next(lines))
    err = capsys.readouterr().err
    assert "1 image(s) attached" in err and "error: " in err and "/no/such.png" in err
    assert [m["role"] for m in chat.messages] == ["user", "assistant"]  # after /reset: one exchange
    assert next(lines) == "never read"


def test_chat_session_history_is_used(tiny):
    chat = Chat(*tiny, GenerationOptions(max_new_tokens=4), out=open("/dev/null", "w"))
    chat.ask("Hello")
    second = chat.ask("Again")
    fresh = Chat(*tiny, GenerationOptions(max_new_tokens=4), out=open("/dev/null", "w")).ask("Again")
    assert len(chat.messages) == 4 and second != fresh  # the first exchange changed the answer


def write_requests(path, img_dir):
    (img_dir / "red.png").write_bytes(png("red"))
    (img_dir / "broken.png").write_bytes(png("red")[:60])
    lines = [
        json.dumps({"id": "a", "prompt": "Describe it", "images": ["red.png"]}),
        json.dumps({"id": "b", "messages": [{"role": "user", "content": "Hello there"}]}),
        "{not json",
        json.dumps({"id": "c", "prompt": "What?", "images": ["broken.png"]}),
        json.dumps({"id": "d", "prompt": "word " * 3000}),  # too long for the 2048-token context
        json.dumps({"id": "e", "messages": [{"role": "robot", "content": "beep"}]}),
        json.dumps({"id": "f", "prompt": "<image> left and right <image>", "images": ["red.png", "red.png"]}),
        json.dumps({"prompt": "no id"}),
    ]
    path.write_text("\n".join(lines) + "\n")


def read(path) -> dict:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_infer_batches_records_errors_and_resumes(tiny, tmp_path):
    model, processor = tiny
    requests, answers = tmp_path / "requests.jsonl", tmp_path / "answers.jsonl"
    write_requests(requests, tmp_path)
    options = GenerationOptions(max_new_tokens=5)
    counts = run(model, processor, requests, answers, options, batch_size=2, max_batch_tokens=200)
    out = read(answers)
    assert counts == {"answered": 4, "errors": 4, "skipped": 0}
    assert set(out) == {"a", "b", "line-3", "c", "d", "e", "f", "line-8"}
    assert {k for k, r in out.items() if "error" in r} == {"line-3", "c", "d", "e"}
    assert "JSONDecodeError" in out["line-3"]["error"] and "too long" in out["d"]["error"]
    assert "broken.png" in out["c"]["error"] and "robot" in out["e"]["error"]
    alone = generate(model, processor, [encode(processor, [{"role": "user", "content": "Hello there"}])], options)[0]
    assert out["b"]["answer"] == alone.text and out["b"]["usage"]["completion_tokens"] == 5

    # A killed run leaves a torn line; the next run cuts it, skips what is answered and retries the errors.
    with open(answers, "a") as f:
        f.write('{"id": "torn", "answer": "cut sh')
    (tmp_path / "broken.png").write_bytes(png("green"))
    counts = run(model, processor, requests, answers, options, batch_size=3)
    assert counts == {"answered": 1, "errors": 3, "skipped": 4}
    lines = answers.read_text().splitlines()
    assert len(lines) == 12 and not any("torn" in line for line in lines)
    assert "answer" in read(answers)["c"]  # the last line of an id wins


def test_infer_command_line(tiny_dir, tmp_path):
    requests, answers = tmp_path / "requests.jsonl", tmp_path / "answers.jsonl"
    write_requests(requests, tmp_path)
    cmd = [sys.executable, "-c", CLI, "infer", "--model", tiny_dir, "--input", str(requests), "--output",
           str(answers), "--batch-size", "4", "--max-new-tokens", "3"]
    done = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "4 answered, 4 errors, 0 already answered" in done.stderr and "eve infer" in done.stderr  # tqdm bar
    assert len(read(answers)) == 8
