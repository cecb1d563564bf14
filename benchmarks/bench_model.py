"""Training-step cost of the EVEv2 divide-and-conquer (DaC) decoder vs. a dense LLM and vs. dense blending.

One run, one machine, side by side. For every size it times a fwd+bwd step (`loss.backward()`,
no optimizer step; grads are dropped with `zero_grad(set_to_none=True)` outside the timed region,
the same for every variant) of:

  dac        EveForConditionalGeneration, all three groups decoupled (EVEv2), on a sequence that
             is half visual (images fed through `pixel_values`, PEL included) and half text;
  dac-nopel  the same model and sequence, but the visual rows are fixed features scattered into
             the text embeddings (`inputs_embeds` + `visual_mask`): the decoder alone, so the
             routing overhead can be told apart from the cost of the patch-embedding layer;
  hf         transformers' Qwen2ForCausalLM of the same text shape, same total length, same labels;
  blend      the official EVEv2 way: BOTH copies run on EVERY token and are blended with the mask,
             `text(x) * (1 - m) + vision(x) * m`. Same model object, same weights, same attention:
             only the routing object handed to the layers differs (`DenseBlendRouting` below).

Before timing it checks that `dac` and `blend` give the same loss and gradients (with the vision
copies moved away from the text weights, so a routing mistake would show), i.e. the comparison is
between two implementations of the same function.

Timing: warm-up steps, then repeats that each run every variant once, in a rotating order, so slow
phases of a noisy machine hit all variants alike. Reported: median seconds per step and the ratios
DaC / HF (goal <= 1.03, PEL included) and blend / DaC (goal >= 1.5), both as ratio of medians and
as median of the per-repeat (paired) ratios. Peak memory: each variant's step runs in a fresh
subprocess, which reads the kernel's RSS high-water mark (/proc/self/status VmHWM, reset via
/proc/self/clear_refs) around one step; tracemalloc would not see torch's allocations.

    python benchmarks/bench_model.py                 # all sizes, appends to benchmarks/RESULTS.md
    python benchmarks/bench_model.py --quick         # small size, fewer repeats, no RESULTS.md
    python benchmarks/bench_model.py --sizes smollm2-135m --repeats 7
    python benchmarks/bench_model.py --quick --profile   # per-op CPU profile of dac vs hf instead
"""

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from machine import machine_info as machine
from machine import memory_status
from eve_vlm.convert.upcycle import upcycle
from eve_vlm.model import modeling
from eve_vlm.model.config import EveConfig
from eve_vlm.model.decoupled import Routing
from eve_vlm.processing.image import num_visual_tokens

HERE = Path(__file__).resolve().parent
VARIANTS = ("dac", "dac-nopel", "hf", "blend")

# Text shapes (Qwen2 field names) plus the input layout. Every row is
# text | image | text | image | text with two 480x512 images of 1 + 15*(16+1) = 256 tokens each,
# i.e. 512 visual + 512 text tokens = 1024 per row.
SIZES = {
    "small": dict(
        text=dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                  intermediate_size=1408, vocab_size=32000, tie_word_embeddings=False),
        batch=2, layout=(256, (480, 512), 128, (480, 512), 128),
    ),
    "smollm2-135m": dict(  # SmolLM2-135M's shape (head_dim 576/9 = 64), random weights
        text=dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                  intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True),
        batch=1, layout=(256, (480, 512), 128, (480, 512), 128),
    ),
}


def blend_flop_ratio(text: dict, seq: int) -> float:
    """Analytic matmul MACs per token, dense blend / DaC: blending doubles only the decoder's
    linear layers; the LM head and the attention scores (causal, mean context seq/2) are shared.
    This is the ceiling of the blend / DaC ratio a perfect implementation could show."""
    d, f, n = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
    hd = d // text["num_attention_heads"]
    q, kv = text["num_attention_heads"] * hd, text["num_key_value_heads"] * hd
    linear = n * (d * q + 2 * d * kv + q * d + 3 * d * f)
    shared = text["vocab_size"] * d + n * 2 * (seq / 2) * q
    return (2 * linear + shared) / (linear + shared)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- dense blending


@dataclass(frozen=True)
class DenseBlendRouting:
    """Drop-in for `Routing` that computes what the official EVEv2 code computes.

    The rows stay in sequence order (`sort`/`unsort` do nothing) and `split` hands the WHOLE
    sequence to both copies ([x, x]), so every norm, q/k/v/o and MLP runs on every token twice;
    `join` blends the two full outputs with the mask. The layer joins q/k/v before the attention
    and the residual stream at its end; in between, the two copies' residual streams are carried
    side by side. The official code blends after every module instead (norms included); with a
    0/1 mask that gives the same values (each copy's stream holds exactly what the blend keeps on
    its own rows) and the same matmul FLOPs, but seven blends and two residual adds per layer
    against four blends and four residual adds here, so if anything this baseline is slightly
    FAST and the blend / DaC ratio it yields is conservative.
    """

    keep_text: torch.Tensor  # [B, L, 1], 1.0 on text rows   (1 - m, computed once per forward)
    keep_vision: torch.Tensor  # [B, L, 1], 1.0 on visual rows (m)

    @classmethod
    def from_mask(cls, visual: torch.Tensor):
        if not bool(visual.any()):
            return Routing.TEXT_ONLY  # text-only forwards are the same in both designs
        m = visual.unsqueeze(-1).to(torch.get_default_dtype())
        return cls(keep_text=1 - m, keep_vision=m)

    @property
    def has_vision(self) -> bool:
        return True

    def sort(self, x: torch.Tensor) -> torch.Tensor:
        return x

    unsort = sort

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, x]

    def join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        text, vision = parts
        return text * self.keep_text.to(text.dtype) + vision * self.keep_vision.to(vision.dtype)


@contextlib.contextmanager
def dense_blend():
    """EveModel.forward builds its routing with the module-level name `Routing.from_mask(...)`
    once per forward and passes it to every layer; swapping that name is the one place needed."""
    with mock.patch.object(modeling, "Routing", DenseBlendRouting):
        yield


# --------------------------------------------------------------------------- models and inputs


def build(size: str, need_hf: bool = True, need_eve: bool = True, seed: int = 0):
    """(hf, eve, batch): the HF model, the EVE model upcycled from it (vision copies perturbed),
    and the inputs. The same seed gives the same weights and inputs in every subprocess."""
    spec = SIZES[size]
    torch.manual_seed(seed)
    cfg = Qwen2Config(**spec["text"], max_position_embeddings=4096)
    hf = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # HF zero-inits biases; random ones keep the q/k/v bias path honest
        for layer in hf.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(std=0.02)
    image_id = cfg.vocab_size - 1
    eve = None
    if need_eve:
        eve = upcycle(hf, image_token_id=image_id)[0]
        with torch.no_grad():  # upcycled copies equal the text weights; make them differ so the
            for name, p in eve.named_parameters():  # dac == blend check can fail if routing is wrong
                if ".vision_" in name:
                    p.add_(torch.randn_like(p) * 0.02)
        eve.train()
    if not need_hf:
        hf = None
    else:
        hf.train()
    # inputs (a generator of their own: they must not depend on which models were built)
    g = torch.Generator().manual_seed(seed + 1)
    patch_size, dense_stride = EveConfig.patch_size, EveConfig.dense_stride  # what upcycle uses
    rows, images = [], []
    for _ in range(spec["batch"]):
        ids = []
        for piece in spec["layout"]:
            if isinstance(piece, int):
                ids.append(torch.randint(0, image_id, (piece,), generator=g))
            else:
                h, w = piece
                images.append(torch.randn(3, h, w, generator=g))
                ids.append(torch.full((num_visual_tokens(h, w, patch_size, dense_stride),), image_id))
        rows.append(torch.cat(ids))
    input_ids = torch.stack(rows)
    visual = input_ids == image_id
    labels = input_ids.masked_fill(visual, -100)  # loss on text tokens only, as in VLM training
    hidden = spec["text"]["hidden_size"]
    feats = torch.randn(int(visual.sum()), hidden, generator=g)  # stand-in PEL output for dac-nopel
    batch = dict(input_ids=input_ids, visual=visual, labels=labels, images=images, feats=feats)
    return hf, eve, batch


def step_fn(variant: str, hf, eve, b):
    """A closure running one fwd+bwd step; returns the loss (detached)."""
    if variant == "hf":
        def step():
            loss = hf(input_ids=b["input_ids"], labels=b["labels"]).loss
            loss.backward()
            return loss.detach()
    elif variant in ("dac", "blend"):
        ctx = dense_blend if variant == "blend" else contextlib.nullcontext

        def step():
            with ctx():
                loss = eve(input_ids=b["input_ids"], pixel_values=b["images"], labels=b["labels"]).loss
                loss.backward()
            return loss.detach()
    elif variant == "dac-nopel":
        def step():
            embeds = eve.model.embed_tokens(b["input_ids"]).masked_scatter(b["visual"].unsqueeze(-1), b["feats"])
            loss = eve(inputs_embeds=embeds, visual_mask=b["visual"], labels=b["labels"]).loss
            loss.backward()
            return loss.detach()
    else:
        raise ValueError(variant)
    return step


def zero_grad(hf, eve):
    for m in (hf, eve):
        if m is not None:
            m.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- fairness check


def check_blend_equals_dac(hf, eve, b) -> dict:
    """dac and blend must compute the same loss and gradients (fp32 up to summation order)."""
    grads = {}
    losses = {}
    for v in ("dac", "blend"):
        zero_grad(hf, eve)
        losses[v] = step_fn(v, hf, eve, b)()
        grads[v] = {n: p.grad.clone() for n, p in eve.named_parameters() if p.grad is not None}
    zero_grad(hf, eve)
    assert grads["dac"].keys() == grads["blend"].keys(), "different parameters got gradients"
    assert any(".vision_" in n for n in grads["dac"]), "no vision copy got a gradient: routing not exercised"
    torch.testing.assert_close(losses["blend"], losses["dac"], rtol=1e-5, atol=1e-6)
    worst = 0.0
    for n, g in grads["dac"].items():
        # relative to the tensor's own scale: the two designs sum the rows in a different order
        err = (grads["blend"][n] - g).abs().max().item() / max(g.abs().max().item(), 1e-12)
        worst = max(worst, err)
        assert err < 1e-3, f"gradient of {n} differs between dac and blend (rel. err {err:.2e})"
    return dict(loss_dac=losses["dac"].item(), loss_blend=losses["blend"].item(), max_rel_grad_err=worst)


# --------------------------------------------------------------------------- timing


def time_size(size: str, warmup: int, repeats: int) -> dict:
    log(f"[{size}] building models and inputs ...")
    hf, eve, b = build(size)
    log(f"[{size}] attention: hf={hf.config._attn_implementation} eve={eve.config._attn_implementation}; "
        f"seq {tuple(b['input_ids'].shape)}, visual tokens {int(b['visual'].sum())}")
    check = check_blend_equals_dac(hf, eve, b)
    log(f"[{size}] check: loss dac {check['loss_dac']:.6f} == blend {check['loss_blend']:.6f}, "
        f"max rel. grad err {check['max_rel_grad_err']:.1e}")
    steps = {v: step_fn(v, hf, eve, b) for v in VARIANTS}
    for i in range(warmup):
        for v in VARIANTS:
            t0 = time.perf_counter()
            steps[v]()
            zero_grad(hf, eve)
            log(f"[{size}] warm-up {i + 1}/{warmup} {v:9s} {time.perf_counter() - t0:7.3f} s")
    # Wall time is what a user waits for; process CPU time (all threads of this process) is what
    # the step itself cost, and barely moves when other jobs preempt us on a shared machine.
    times = {v: [] for v in VARIANTS}
    cpu = {v: [] for v in VARIANTS}
    for r in range(repeats):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]  # rotate: no fixed slot
        for v in order:
            c0, t0 = time.process_time(), time.perf_counter()
            steps[v]()
            times[v].append(time.perf_counter() - t0)
            cpu[v].append(time.process_time() - c0)
            zero_grad(hf, eve)
        log(f"[{size}] repeat {r + 1}/{repeats} (wall/cpu s): "
            + "  ".join(f"{v} {times[v][-1]:.2f}/{cpu[v][-1]:.2f}" for v in VARIANTS))
    shape, n_visual = tuple(b["input_ids"].shape), int(b["visual"].sum())
    del hf, eve
    return dict(times=times, cpu=cpu, check=check, shape=shape, visual=n_visual)


def summarize(times: dict) -> dict:
    """Medians and the two goal ratios, as ratio of medians and as median of per-repeat ratios
    (paired: the variants of one repeat ran back to back, so they saw the same machine state)."""
    med = {v: statistics.median(t) for v, t in times.items()}
    paired = lambda a, c: statistics.median(x / y for x, y in zip(times[a], times[c]))  # noqa: E731
    return dict(
        median=med,
        dac_over_hf=(med["dac"] / med["hf"], paired("dac", "hf")),
        nopel_over_hf=(med["dac-nopel"] / med["hf"], paired("dac-nopel", "hf")),
        blend_over_dac=(med["blend"] / med["dac"], paired("blend", "dac")),
    )


# --------------------------------------------------------------------------- peak memory (subprocess)


def mem_child(size: str, variant: str) -> None:
    """Runs in a fresh interpreter: one warm-up step, then the RSS high-water mark of one step."""
    hf, eve, b = build(size, need_hf=variant == "hf", need_eve=variant != "hf")
    step = step_fn(variant, hf, eve, b)
    step()  # warm-up: lazy inits, first-call allocations
    zero_grad(hf, eve)
    import gc
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back so the baseline is honest
    before = memory_status()["VmRSS"]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    step()
    after = memory_status()
    print(json.dumps(dict(base=before, peak=after["VmHWM"], increase=after["VmHWM"] - before)))


def measure_memory(size: str, threads: int) -> dict:
    env = dict(os.environ)
    # Fixed mmap threshold: large tensors are mmapped and unmapped on free, so RSS follows the
    # tensors alive instead of what glibc chooses to keep in its heap.
    env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    out = {}
    for v in VARIANTS:
        log(f"[{size}] peak memory: {v} (fresh subprocess) ...")
        res = subprocess.run(
            [sys.executable, __file__, "--_mem-child", v, "--sizes", size, "--threads", str(threads)],
            env=env, capture_output=True, text=True, check=False,
        )
        if res.returncode:
            log(res.stderr[-2000:])
            out[v] = None
            continue
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# --------------------------------------------------------------------------- profile


def profile(size: str, top: int = 25) -> None:
    """Per-op CPU self time of one dac step and one hf step, plus the routing ops' share."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    hf, eve, b = build(size)
    for v in ("dac", "hf", "dac-nopel"):
        step = step_fn(v, hf, eve, b)
        step()
        zero_grad(hf, eve)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        zero_grad(hf, eve)
        avg = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in avg)
        print(f"\n=== profile [{size}] {v}: total self CPU {total / 1e6:.3f} s ===")
        print(avg.table(sort_by="self_cpu_time_total", row_limit=top))
        groups = {
            "gather/scatter (index_select, index_copy, index_add, scatter, gather)":
                ("index_select", "index_copy", "index_add", "scatter", "gather", "IndexSelect", "IndexCopy"),
            "matmul (addmm, mm, bmm, linear)": ("addmm", "aten::mm", "aten::bmm", "aten::linear", "matmul"),
            "attention (sdpa)": ("scaled_dot_product", "flash_attention", "_efficient_attention"),
            "conv (PEL)": ("conv", "convolution", "mkldnn"),
        }
        for label, keys in groups.items():
            t = sum(e.self_cpu_time_total for e in avg if any(k.lower() in e.key.lower() for k in keys))
            print(f"  {label:70s} {t / 1e6:7.3f} s ({100 * t / total:5.1f}%)")


# --------------------------------------------------------------------------- report




def fmt_mem(m) -> str:
    return "n/a" if m is None else f"{m['increase'] / 2**20:,.0f} MiB (peak RSS {m['peak'] / 2**20:,.0f} MiB)"


def table(size: str, res: dict) -> list[str]:
    w, c, mem = res["wall_stats"], res["cpu_stats"], res["memory"]
    t, ids = SIZES[size]["text"], res["shape"]
    lines = [
        f"### `{size}`: hidden {t['hidden_size']}, {t['num_hidden_layers']} layers, "
        f"{t['num_attention_heads']}/{t['num_key_value_heads']} heads, intermediate {t['intermediate_size']}, "
        f"vocab {t['vocab_size']}, tied {t['tie_word_embeddings']}; batch {ids[0]} x {ids[1]} tokens "
        f"({res['visual']} visual via `pixel_values`, rest text); {res['repeats']} repeats after {res['warmup']} warm-up",
        "",
        "| variant | median wall s/step | min wall | median CPU s/step | step peak RSS increase |",
        "|---|---:|---:|---:|---|",
    ]
    names = {"dac": "EVEv2 DaC (routed, PEL incl.)", "dac-nopel": "EVEv2 DaC, decoder only (no PEL)",
             "hf": "HF Qwen2ForCausalLM (dense text)", "blend": "dense blend (official EVEv2)"}
    for v in VARIANTS:
        lines.append(f"| {names[v]} | {w['median'][v]:.3f} | {min(res['times'][v]):.3f} | "
                     f"{c['median'][v]:.3f} | {fmt_mem(mem.get(v))} |")
    r = lambda s, k: f"{s[k][0]:.3f} (paired {s[k][1]:.3f})"  # noqa: E731
    lines += [
        "",
        "| ratio (median; paired median) | wall | CPU | goal |",
        "|---|---|---|---|",
        # CPU time in bold: on a shared machine it is the number that measures the code
        f"| DaC / HF | {r(w, 'dac_over_hf')} | **{r(c, 'dac_over_hf')}** | <= 1.03 |",
        f"| DaC decoder only / HF | {r(w, 'nopel_over_hf')} | {r(c, 'nopel_over_hf')} | (no PEL) |",
        f"| dense blend / DaC | {r(w, 'blend_over_dac')} | **{r(c, 'blend_over_dac')}** | >= 1.5 |",
        "",
        f"Matmul FLOPs, dense blend / DaC (analytic, LM head and attention shared): "
        f"{blend_flop_ratio(t, ids[1]):.2f}.",
        f"Check before timing: loss dac {res['check']['loss_dac']:.6f} == blend {res['check']['loss_blend']:.6f}; "
        f"max relative grad difference {res['check']['max_rel_grad_err']:.1e}.",
        "",
    ]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small size only, 1 warm-up, 3 repeats, no RESULTS.md")
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), help="default: all (with --quick: small)")
    p.add_argument("--repeats", type=int, help="timed repeats per variant (default 5, --quick 3)")
    p.add_argument("--warmup", type=int, help="warm-up steps per variant (default 2, --quick 1)")
    # One thread by default: on a small shared machine a second OpenMP thread that gets preempted
    # stalls every parallel op (steps swung 4x in trials); one thread degrades gracefully.
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing: per-op CPU profile (torch.profiler) of one dac / hf / dac-nopel step")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md", help="Markdown file to append to")
    p.add_argument("--no-write", action="store_true", help="do not append to --results")
    p.add_argument("--_mem-child", dest="mem_child", choices=VARIANTS, help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sizes = a.sizes or (["small"] if a.quick else list(SIZES))
    if a.mem_child:
        mem_child(sizes[0], a.mem_child)
        return
    if a.profile:
        for size in sizes:
            profile(size)
        return
    repeats = a.repeats or (3 if a.quick else 5)
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
    write = not (a.no_write or a.quick)
    info, load = machine(), os.getloadavg()
    log(f"machine: {info}, load average {load[0]:.2f}")
    results = {}
    for size in sizes:
        r = time_size(size, warmup, repeats)
        r.update(wall_stats=summarize(r["times"]), cpu_stats=summarize(r["cpu"]), repeats=repeats, warmup=warmup,
                 memory={} if a.no_memory else measure_memory(size, a.threads))
        results[size] = r
        print("\n".join(table(size, r)), flush=True)
    if write:
        when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        head = [
            f"## Model training step: EVEv2 DaC vs HF Qwen2 vs dense blend ({when})",
            "",
            "`" + " ".join(["python benchmarks/bench_model.py", *sys.argv[1:]]) + "`",
            "",
            f"fp32 on CPU: {info['cpu']}, {info['cores']} cores, torch.set_num_threads({info['threads']}); "
            f"Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}. "
            "Step = forward + `loss.backward()` (no optimizer step); loss on text tokens only; "
            "the variants are interleaved in every repeat (rotating order) on one machine in one run. "
            "Wall time includes preemption by other jobs on the machine (load average at start "
            f"{load[0]:.2f}, at end {os.getloadavg()[0]:.2f}); CPU time is this process's CPU time and "
            "is the steadier number on a shared machine. "
            "Peak memory: RSS high-water mark of one step in a fresh subprocess, minus RSS before it.",
            "",
        ]
        body = [line for size in sizes for line in table(size, results[size])]
        with open(a.results, "a") as f:
            if f.tell() == 0:
                f.write("# Benchmark results\n\n")
            f.write("\n".join(head + body) + "\n")
        log(f"appended to {a.results}")


if __name__ == "__main__":
    main()
