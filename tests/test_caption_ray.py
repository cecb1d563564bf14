"""Ray Data mode on a local one-node Ray: the same records as the single-node engine, errors
reported per image, and a rerun that resumes (skips what is written)."""

import json
import os
import signal

import pytest

from eve_vlm.caption import run as run_local
from eve_vlm.caption.engine import errors_path
from eve_vlm.caption.layout import LayoutExpert
from tiny import FailsOnWide, fake_server, make_images, read_records

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ray[data]'); Ray mode untested")


@pytest.fixture(scope="module")
def local_ray():
    # the workers import the tests' own expert (tiny:FailsOnWide) from here
    paths = [os.path.dirname(__file__), os.path.join(os.path.dirname(os.path.dirname(__file__)), "src")]
    # ray.init installs SIGTERM / SIGINT handlers in this process; later tests check their own
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()
    for s, handler in handlers.items():
        signal.signal(s, handler)


def comparable(record: dict) -> str:
    return json.dumps(record, sort_keys=True)


def test_ray_mode_matches_the_single_node_engine(tmp_path, local_ray):
    from eve_vlm.caption.ray_mode import run

    make_images(tmp_path / "imgs", 7)
    (tmp_path / "imgs" / "07.png").write_bytes(b"broken")
    specs = [("layout", {}), ("picky=test_caption_engine:FailsOnWide", {})]
    out = str(tmp_path / "ray" / "caps.jsonl")
    counts = run([str(tmp_path / "imgs")], out, specs, batch_size=3, workers=1, concurrency=1,
                 progress=False)
    assert (counts["captioned"], counts["partial"], counts["errors"]) == (7, 6, 1)
    local = str(tmp_path / "local" / "caps.jsonl")
    picky = FailsOnWide()
    picky.name = "picky"
    run_local([str(tmp_path / "imgs")], local, [LayoutExpert(), picky], progress=False)
    assert sorted(map(comparable, read_records(out))) == sorted(map(comparable, read_records(local)))
    assert [r["id"] for r in read_records(errors_path(out))] == ["07.png"]
    again = run([str(tmp_path / "imgs")], out, specs, progress=False)
    assert (again["captioned"], again["skipped"]) == (0, 8)


def test_ray_mode_with_an_endpoint_fuser_bounds_requests(tmp_path, local_ray):
    from eve_vlm.caption.ray_mode import run
    make_images(tmp_path / "imgs", 10)
    out = str(tmp_path / "caps.jsonl")
    with fake_server(delay=0.3) as server:
        counts = run([str(tmp_path / "imgs")], out, [("layout", {})], server.url, {"timeout": 10}, workers=1,
                     concurrency=4, progress=False)
    assert counts["captioned"] == 10 and len(server.prompts) == 10 and 2 <= server.peak <= 4
    assert {(r["fuser"], r["conversations"][1]["value"]) for r in read_records(out)} == {("endpoint:fake", "A fused caption.")}
