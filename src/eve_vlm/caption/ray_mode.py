"""Ray Data mode: the same run, with the experts and the fuser spread over a Ray cluster.

    ray start --head                       # then `ray start --address=HEAD:6379` on every other node
    eve caption --ray auto --input 'shards/*.jsonl' --output captions.jsonl --workers 64 ...

The driver does what the single-node engine does around the work (resume, shards, duplicates,
the output files); Ray runs `analyze` in a pool of `workers` actors (one CPU each) and `fuse` in
a second pool, and the records stream back to the driver, which appends them to the output: a
killed job resumes like a single-node one. The fuser pool: for an in-process model,
`concurrency` actors with `gpus_per_fuser` GPUs each, one batch at a time; for an endpoint,
actors of up to 32 request threads each, `concurrency` requests in flight in all; for rules, one
actor. Work goes to Ray in chunks of `chunk` images, so the driver never holds the whole input.
Records cross Ray as JSON strings: expert facts of any shape survive Arrow.
Every node must see the image paths (a shared file system) and have eve-vlm installed.
"""

import concurrent.futures
import dataclasses
import json
import math

from ..extras import needs
from .engine import Analysis, Item, Run, analyze, batches, check_experts, fuse
from .experts import load_expert
from .fusers import RuleFuser, load_fuser


class _Experts:
    def __init__(self, expert_specs: list):
        self.experts = [load_expert(spec, **opts) for spec, opts in expert_specs]

    def __call__(self, batch: dict) -> dict:
        items = [Item(**json.loads(s)) for s in batch["item"]]
        return {"result": [json.dumps(dataclasses.asdict(r) if isinstance(r, Analysis) else r)
                           for r in analyze(items, self.experts)]}


class _Fuse:
    def __init__(self, fuser_spec: str, fuser_opts: dict, out_dir: str, threads: int):
        self.fuser, self.rule, self.out_dir = load_fuser(fuser_spec, **fuser_opts), RuleFuser(), out_dir
        self.threads = threads

    def __call__(self, batch: dict) -> dict:
        records, ready = [], []
        for s in batch["result"]:
            r = json.loads(s)
            if "statements" in r:
                statements = [tuple(x) for x in r["statements"]]
                ready.append(Analysis(Item(**r["item"]), r["experts"], r["errors"], statements))
            else:
                records.append(r)
        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            for done in pool.map(lambda c: fuse(c, self.fuser, self.out_dir, self.rule),
                                 batches(iter(ready), self.fuser.batch_size)):
                records += done
        return {"record": [json.dumps(r, ensure_ascii=False) for r in records]}


def run(inputs: list[str], output: str, expert_specs: list, fuser_spec: str = "rule", fuser_opts: dict | None = None,
        batch_size: int = 16, workers: int = 2, concurrency: int = 1, gpus_per_fuser: float = 0,
        shard: tuple[int, int] = (0, 1), retry_errors: bool = False, limit: int | None = None,
        address: str | None = None, chunk: int = 100_000, progress: bool = True) -> dict:
    """`expert_specs`: [(spec, options)] as for `load_expert`, built in each actor. `address`:
    "auto" (a running cluster), "ray://HOST:10001", or None (a local Ray, or $RAY_ADDRESS)."""
    with needs("caption", "Ray mode"):
        import ray
    experts = [load_expert(spec, **opts) for spec, opts in expert_specs]  # bad specs fail here, not in 64 actors
    check_experts(experts)
    fuser_opts = fuser_opts or {}
    # (actors, request threads per actor, CPUs per actor): an endpoint fuser only waits on HTTP,
    # rules cost nothing, a model needs a core (and its GPUs) and runs one batch at a time.
    if fuser_spec.startswith(("http://", "https://")):
        threads = min(concurrency, 32)
        actors, fuse_cpus, fuse_batch = math.ceil(concurrency / threads), 0, threads
    elif fuser_spec == "rule":
        actors, threads, fuse_cpus, fuse_batch = 1, 1, 0, batch_size
    else:
        actors, threads, fuse_cpus, fuse_batch = concurrency, 1, 1, batch_size
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    with Run(output, progress) as sink:
        pending = sink.pending(inputs, shard, retry_errors, limit)
        if progress:
            sink.announce(experts)
        for items in batches(pending, chunk):
            ds = ray.data.from_items([{"item": json.dumps(dataclasses.asdict(i))} for i in items])
            ds = ds.map_batches(_Experts, fn_constructor_args=(expert_specs,), batch_size=batch_size,
                                compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1)
            ds = ds.map_batches(_Fuse, fn_constructor_args=(fuser_spec, fuser_opts, sink.out_dir, threads),
                                batch_size=fuse_batch, compute=ray.data.ActorPoolStrategy(size=actors),
                                num_cpus=fuse_cpus, num_gpus=gpus_per_fuser)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for line in batch["record"]:
                    sink.write(json.loads(line))
                sink.sync()
    return dict(sink.counts)
