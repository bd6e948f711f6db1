"""The layers of the library (issue 15, item 3): a module imports only from modules of a lower notebook number, at the
top of the module or inside a function, and no library module imports the test doubles (`portopt.testing`)."""
import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "portopt"


def layers() -> dict[str, str]:
    "Module name -> the notebook it is exported from (its layer: notebooks sort by number, `03a` between `03` and `04`)."
    out = {}
    for py in PACKAGE.rglob("*.py"):
        m = re.search(r"File to edit: \S*nbs/(\S+)\.ipynb", py.read_text()[:400])
        if m:
            out[".".join(("portopt", *py.relative_to(PACKAGE).with_suffix("").parts))] = m.group(1)
    return out


def imports(module: str, tree: ast.AST):
    "`(line, imported portopt module)` for every import of the module, relative ones resolved."
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = module.split(".")[: -node.level] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            names = [target] + [f"{target}.{a.name}" for a in node.names]   # `from portopt import x` imports module x
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("portopt"):
                yield node.lineno, name


def test_no_module_imports_a_higher_layer():
    known = layers()
    assert {"portopt.config", "portopt.store", "portopt.stores", "portopt.imports", "portopt.cli"} <= set(known)
    wrong = []
    for module, notebook in known.items():
        path = PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")
        for line, name in imports(module, ast.parse(path.read_text())):
            while name not in known and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in known and known[name] > notebook:
                wrong.append(f"{module} ({notebook}) line {line} imports {name} ({known[name]})")
            if name == "portopt.testing" and module != "portopt.testing":
                wrong.append(f"{module} line {line} imports the test doubles (portopt.testing)")
    assert not wrong, "imports from a higher layer:\n" + "\n".join(wrong)


def test_the_check_sees_a_violation():
    "The walk above finds a function-level import of a higher layer (what the store once did with portopt.supabase)."
    tree = ast.parse("def open_store():\n    from .supabase import SupabaseStore\n")
    assert list(imports("portopt.store", tree)) == [(2, "portopt.supabase"), (2, "portopt.supabase.SupabaseStore")]
