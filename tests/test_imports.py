"""The package's import graph points one way (docs/architecture in README): a lower layer never
imports a higher one, not even lazily inside a function, and no modules import each other in a
circle. Parsed from the source, so it also covers imports that only run in rare code paths."""

import ast
import pathlib
import subprocess
import sys

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "eve_vlm"

# Each top-level package or module of eve_vlm, lowest layer first; a module may import its own
# layer (if that makes no cycle) and the layers below.
LAYERS = [
    {"errors", "assets", "jsonl", "dtypes", "extras"},
    {"processing"},
    {"model", "data"},
    {"convert"},
    {"train", "infer"},
    {"serve", "eval"},
    {"caption", "integrations"},
    {"cli", "demo", "showcase"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
# The package root only re-exports lazily and registers the Auto classes (`auto.py`).
ROOT_MODULES = {"eve_vlm", "eve_vlm.auto"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """eve_vlm modules imported anywhere in the file (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from pkg import mod` imports the module pkg.mod when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t == "eve_vlm" or t.startswith("eve_vlm."))
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) - {name} for name, path in found.items()}


def top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_every_top_level_name_has_a_layer():
    names = {top(m) for m in modules() if m not in ROOT_MODULES}
    assert names - LAYER.keys() == set(), "place new packages in LAYERS (and in the README's picture)"


def test_no_upward_imports():
    upward = []
    for module, targets in graph().items():
        if module in ROOT_MODULES:
            continue
        for target in targets:
            if target == "eve_vlm" and LAYER[top(module)] < len(LAYERS) - 1:
                upward.append(f"{module} imports the package root (import from the package that owns the name)")
            elif target not in ROOT_MODULES | {"eve_vlm"} and LAYER[top(target)] > LAYER[top(module)]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("level", ["module", "package"])
def test_no_import_cycles(level):
    edges = {m: t - ROOT_MODULES for m, t in graph().items() if m not in ROOT_MODULES}
    if level == "package":
        packages = {}
        for module, targets in edges.items():
            packages.setdefault(top(module), set()).update(top(t) for t in targets if top(t) != top(module))
        edges = packages
    assert cycles(edges) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                               "PATH": "/usr/bin:/bin"}).stdout


def test_cli_imports_neither_torch_nor_transformers():
    loaded = run("import sys; from eve_vlm.cli import build_parser; build_parser(); "
                 "print(sorted({m.split('.')[0] for m in sys.modules}))")
    assert "torch" not in loaded and "transformers" not in loaded, loaded


@pytest.mark.parametrize("transformers_first", [False, True])
def test_import_eve_vlm_registers_auto_classes(tmp_path, transformers_first):
    """`import eve_vlm` then the Auto classes load an eve folder (no remote code), whichever of
    eve_vlm and transformers is imported first."""
    from tiny import tiny_eve
    from eve_vlm.processing import EveImageProcessor, EveProcessor, smollm2_tokenizer

    model = tiny_eve()
    model.save_pretrained(tmp_path)
    processor = EveProcessor(EveImageProcessor(max_size=64), smollm2_tokenizer())
    processor.save_pretrained(tmp_path)
    order = "import transformers, eve_vlm" if transformers_first else "import eve_vlm, transformers"
    out = run(f"{order}\nfrom transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor\n"
              f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})\n"
              f"p = AutoProcessor.from_pretrained({str(tmp_path)!r})\n"
              "print(type(m).__name__, type(p).__name__, AutoConfig.for_model('eve').model_type)")
    assert out.split() == ["EveForConditionalGeneration", "EveProcessor", "eve"]
