"""`make test-wheel`: the built wheel, installed with the serve extra into a clean venv, serves.

    VENV/bin/python -I -u tests/check_wheel.py dist/eve_vlm-VERSION-py3-none-any.whl src

Run with the wheel venv's python in isolated mode (-I: neither PYTHONPATH nor this folder is on the
path) from a temporary folder, so only the installed package can be imported. From the repository it
reads src/ as data only, to compare the wheel's files against. Checks: the wheel holds every file
of src/eve_vlm (package data included) and nothing else (no tests, no benchmarks); the venv has the
pinned versions; a tiny random model folder made by the installed package is served by the installed
`eve serve` on 127.0.0.1 and answers an image and a text request; `eve web` names its missing extra.
"""

import base64
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

EXTRA = "serve"
STARTUP_S = 300  # loading torch and transformers on a busy 2-core machine


def check_wheel_files(wheel: Path, src: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    dist_info = f"eve_vlm-{importlib.metadata.version('eve-vlm')}.dist-info"
    assert {n.split("/")[0] for n in names} == {"eve_vlm", dist_info}, sorted({n.split("/")[0] for n in names})
    sources = {p.relative_to(src).as_posix() for p in (src / "eve_vlm").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert sources - names == set(), f"not in the wheel: {sorted(sources - names)}"
    assert sources >= names - {n for n in names if n.startswith(dist_info)}, sorted(names - sources)
    data = [n for n in names if n.startswith("eve_vlm/") and not n.endswith(".py")]
    assert any(n.startswith("eve_vlm/eval/tasks/") for n in data), data
    assert any(n.startswith("eve_vlm/caption/prompts/") for n in data), data
    print(f"wheel: {len(names)} files, package data {sorted(data)}")


def check_installed(venv: Path) -> None:
    import eve_vlm

    assert Path(eve_vlm.__file__).resolve().is_relative_to(venv), eve_vlm.__file__
    requires = importlib.metadata.requires("eve-vlm")
    wanted = [r for r in requires if ";" not in r or f'extra == "{EXTRA}"' in r]
    for requirement in wanted:
        name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^;\s]+).*", requirement).groups()
        installed = importlib.metadata.version(name).split("+")[0]  # torch's local tag: 2.13.0+cpu
        assert installed == version, (requirement, installed)
    assert importlib.util.find_spec("gradio") is None, "the venv is not clean: gradio (web extra) is installed"
    print(f"installed: eve_vlm from the venv, {len(wanted)} pinned requirements of eve-vlm[{EXTRA}] at their pins")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        assert response.status == 200, response.status
        return json.load(response)


def png_data_uri() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (48, 32), "red").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def wait_until_up(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"eve serve exited with {server.returncode}"
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"eve serve did not answer {url}/health in {STARTUP_S} s")


def check_serve(eve: str, model: str, env: dict, log) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    server = subprocess.Popen([eve, "serve", "--model", model, "--port", str(port), "--served-model-name", "tiny"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_up(url, server)
        print(f"eve serve: up in {time.monotonic() - start:.1f} s")
        image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri()}},
                                             {"type": "text", "text": "What colour is the box?"}]}
        text = {"role": "user", "content": "Say hello."}
        for name, message in (("image", image), ("text", text)):
            reply = post(url + "/v1/chat/completions",
                         {"model": "tiny", "messages": [message], "max_tokens": 8, "temperature": 0})
            answer = reply["choices"][0]["message"]["content"]
            assert answer and reply["usage"]["completion_tokens"] > 0, reply
            print(f"{name} request: 200, {reply['usage']['prompt_tokens']} prompt tokens, answer {answer!r}")
    finally:
        server.terminate()
        server.wait(timeout=60)


def check_missing_extra(eve: str, model: str, env: dict) -> None:
    done = subprocess.run([eve, "web", "--model", model], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "pip install 'eve-vlm[web]'" in done.stderr, (done.returncode, done.stderr)
    print(f"eve web without its extra: {done.stderr.strip()}")


def main(wheel: str, src: str) -> None:
    wheel, src = Path(wheel).resolve(), Path(src).resolve()
    venv = Path(sys.prefix).resolve()
    assert sys.prefix != sys.base_prefix, "run this with the wheel venv's python"
    check_wheel_files(wheel, src)
    check_installed(venv)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    eve = str(Path(sys.executable).parent / "eve")  # the console script the wheel installed
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        from eve_vlm.train.toy import toy_model

        model = toy_model(os.path.join(tmp, "model"), template="eve")
        with open(os.path.join(tmp, "serve.log"), "w+") as log:
            try:
                check_serve(eve, model, env, log)
            except BaseException:
                log.seek(0)
                print("eve serve's output:\n" + log.read(), file=sys.stderr)
                raise
        check_missing_extra(eve, model, env)
    print("wheel OK")


if __name__ == "__main__":
    main(*sys.argv[1:])
