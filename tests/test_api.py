"""The public API and the one shape: `import interp` lists what a notebook needs, every attack and
protection is Config / run / Result, results round-trip through JSON, a new attack is one file,
the CLI's options come from the Configs, and a run's HTML opens offline."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import interp
from interp.attacks.base import registry
from interp.protections.base import registry as protection_registry

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_import_interp_lists_the_api_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-c", "import interp; print(interp.__all__)"],
                         capture_output=True, text=True, check=True).stdout
    names = set(eval(out))  # noqa: S307 - our own printout of a list of strings
    for name in ("load_model", "save_model", "load_questions", "evaluate", "logit_lens",
                 "diff_in_means_models", "ablation_hooks", "ablated", "orthogonalize_weights",
                 "rmu", "npo", "dpo", "directions", "lens", "prune", "finetune", "gcg",
                 "open_run", "export_hf"):
        assert name in names, name
    for name in interp.__all__:
        assert getattr(interp, name) is not None, name


@pytest.mark.parametrize("module", [*registry().values(), *protection_registry().values()],
                         ids=[*registry(), *protection_registry()])
def test_every_attack_and_protection_has_the_one_shape(module):
    assert dataclasses.is_dataclass(module.Config) and module.Config() is not None
    assert callable(module.run) and module.SPEC.name
    for method in ("to_json", "from_json", "rows", "plot"):
        assert callable(getattr(module.Result, method)), method
    assert "out" in module.run.__code__.co_varnames


def test_notebooks_use_only_public_names():
    public = set(interp.__all__)
    for path in NOTEBOOKS:
        code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                         if c["cell_type"] == "code")
        assert not re.search(r"^\s*(from interp|import interp\.)", code, re.M), path.name
        used = set(re.findall(r"\binterp\.(\w+)", code))
        assert used and used <= public, (path.name, used - public)


def test_results_round_trip_through_json(smoke_run):
    run, _ = smoke_run
    for name, module in registry().items():
        for path in sorted((run / "attacks").glob(f"*/{name}/result.json")):
            data = json.loads(path.read_text())
            result = module.Result.from_json(data)
            assert json.loads(json.dumps(result.to_json())) == data, path
            assert result.rows(path.parent.parent.name), path
            assert result.plot() is not None


def test_run_paths_are_relative_to_the_run_folder(smoke_run, tmp_path):
    run, summary = smoke_run
    assert summary["models"]["rmu"] == "models/rmu"
    assert not Path(summary["models"]["original"]).is_absolute()
    assert all(not Path(f).is_absolute() for f in summary["figures"])
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    opened = interp.open_run(moved)
    assert Path(opened.model_spec("rmu")) == moved / "models" / "rmu"
    assert Path(opened.model_spec("original")).is_relative_to(moved)
    assert len(interp.load_questions(f"{moved}:forget_test")) == len(
        opened.data.questions("forget_test"))


def test_no_html_of_a_run_references_an_external_url(smoke_run, smoke_audit):
    run, _ = smoke_run
    _, audit_folder, *_ = smoke_audit
    pages = [*run.rglob("*.html"), *audit_folder.rglob("*.html")]
    assert len(pages) > 10
    external = re.compile(r"""(src|href)\s*=\s*["']?(https?:)?//""", re.I)
    for page in pages:
        text = page.read_text()
        assert not external.search(text), page
        if "plotly" in text:
            js = re.search(r'src="([^"]*plotly\.min\.js)"', text)
            assert js and (page.parent / js.group(1)).is_file(), page
    assert (run / "plotly.min.js").is_file()
    assert not list((run / "attacks").rglob("plotly.min.js"))  # one copy for the whole run


def test_cli_options_come_from_the_configs():
    from interp.cli import build_parser
    from interp.options import config_from_args, options

    parser = build_parser()
    for name, module in registry().items():
        flags = {o.flag for o in options(module.Config)}
        args = parser.parse_args(["attack", name, "--model", "m", "--data", "d", "--out", "o"])
        assert config_from_args(module.Config(), args) == module.Config()  # nothing given
        assert {"--device", "--dtype", "--tokenizer"} <= set(
            parser._subparsers._group_actions[0].choices["attack"]._subparsers
            ._group_actions[0].choices[name]._option_string_actions), name
        assert flags, name
    args = parser.parse_args(["attack", "finetune", "--model", "m", "--data", "d", "--out", "o",
                              "--rank", "4", "--unrelated-n", "3,7", "--eval-limit", "none",
                              "--set", "lora.alpha=2.5"])
    from interp.attacks import finetune

    cfg = config_from_args(finetune.Config(), args)
    base = finetune.Config()
    assert cfg == replace(base, unrelated_n=(3, 7), eval_limit=None,
                          lora=replace(base.lora, rank=4, alpha=2.5))
    args = parser.parse_args(["protect", "dpo", "--data", "d", "--out", "o", "--beta", "0.3"])
    from interp.protections import dpo

    assert config_from_args(dpo.Config(), args) == replace(dpo.Config(), beta=0.3)


def _imported(node, package: str) -> list[str]:
    """The module names one Import / ImportFrom node may load (relative ones resolved against
    `package`; `from a import b` may load `a.b`)."""
    import ast

    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:  # from . import x, from ..a import b
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    else:
        base = node.module
    return [base, *(f"{base}.{a.name}" for a in node.names)]


def _module_imports(root: Path) -> dict[str, dict[str, int]]:
    """interp module -> {interp module it imports: line}, from every import statement anywhere in
    it (module level, inside functions, under `if TYPE_CHECKING`). Importing `a.b.c` also runs
    the packages `a.b` above it; a package importing its own submodules is no edge."""
    import ast

    files = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _imported(node, package):
                parts = target.split(".")
                for dep in (".".join(parts[:i]) for i in range(2, len(parts) + 1)):
                    if dep in files and dep != name and not name.startswith(dep + ".") \
                            and not dep.startswith(name + "."):
                        deps.setdefault(dep, node.lineno)
        graph[name] = deps
    return graph


def _find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle (a list of modules, first = last), or None."""
    done, stack = set(), []

    def visit(m):
        if m in stack:
            return stack[stack.index(m):] + [m]
        if m in done:
            return None
        stack.append(m)
        for d in sorted(graph[m]):
            if (cycle := visit(d)) is not None:
                return cycle
        stack.pop()
        done.add(m)
        return None

    for m in sorted(graph):
        if (cycle := visit(m)) is not None:
            return cycle
    return None


def test_the_cycle_finder_sees_imports_inside_functions(tmp_path):
    pkg = tmp_path / "interp"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from interp.sub import a\n")  # its own: no edge
    (pkg / "sub" / "a.py").write_text("def f():\n    from . import b\n")
    (pkg / "sub" / "b.py").write_text("import interp.c\n")
    (pkg / "c.py").write_text("def g():\n    from interp.sub.a import f\n")
    graph = _module_imports(pkg)
    assert graph["interp.sub.a"] == {"interp.sub.b": 2}
    assert graph["interp.c"] == {"interp.sub": 2, "interp.sub.a": 2}
    assert _find_cycle(graph) == ["interp.c", "interp.sub.a", "interp.sub.b", "interp.c"]
    (pkg / "c.py").write_text("X = 1\n")
    assert _find_cycle(_module_imports(pkg)) is None


def test_no_import_cycles_and_small_modules():
    root = Path(interp.__file__).parent
    graph = _module_imports(root)
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle (imports inside functions count): " + " -> ".join(
        f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"
    sizes = {p.name: len(p.read_text().splitlines()) for p in root.rglob("*.py")}
    assert max(sizes.values()) <= 520, sizes


def test_every_subcommand_that_loads_a_model_takes_device_dtype_tokenizer():
    from interp.cli import build_parser

    def subparsers(parser):
        for action in parser._actions:
            if isinstance(action, __import__("argparse")._SubParsersAction):
                return action.choices
        return {}

    top = subparsers(build_parser())
    leaves = {"eval": top["eval"], "export": top["export"], "reproduce": top["reproduce"],
              "audit": top["audit"], "data build": subparsers(top["data"])["build"]}
    leaves.update({f"protect {n}": p for n, p in subparsers(top["protect"]).items()})
    leaves.update({f"attack {n}": p for n, p in subparsers(top["attack"]).items()
                   if n != "compare"})  # compare reads finished folders, loads no model
    assert len(leaves) >= 5 + 3 + 5
    for name, parser in leaves.items():
        flags = set(parser._option_string_actions)
        assert {"--device", "--dtype", "--tokenizer"} <= flags, name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebooks_show_their_figures(path):
    """The notebooks are committed executed (`make notebooks`): every code cell ran, none
    failed, and every plotly figure carries a static PNG beside the interactive one."""
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), "a cell was not executed"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures and all("image/png" in o["data"] for o in figures)
