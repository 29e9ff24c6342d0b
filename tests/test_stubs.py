"""The checked-in stub python/nearq/_nearq.pyi matches the compiled module."""

import ast
import inspect
from pathlib import Path

import nearq
from nearq import _nearq

STUB = Path(__file__).resolve().parents[1] / "python" / "nearq" / "_nearq.pyi"


def _stub_names():
    tree = ast.parse(STUB.read_text())
    top, members = set(), {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            top.add(node.name)
        elif isinstance(node, ast.ClassDef):
            top.add(node.name)
            members[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            top.add(node.target.id)
    return top, members


def test_stub_lists_exactly_the_public_native_names():
    top, members = _stub_names()
    native = {n for n in dir(_nearq) if not n.startswith("_")} | {"__version__"}
    assert {n for n in top if not n.startswith("_") or n == "__version__"} == native
    for cls, names in members.items():
        real = {n for n in dir(getattr(_nearq, cls)) if not n.startswith("_")} | {"__len__"}
        assert {n for n in names if not n.startswith("_") or n == "__len__"} == real, cls


def test_stub_signatures_match_where_introspectable():
    tree = ast.parse(STUB.read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            sig = inspect.signature(getattr(_nearq, node.name))
            assert [a.arg for a in node.args.args] == list(sig.parameters), node.name


def test_package_is_typed():
    assert (Path(nearq.__file__).parent / "py.typed").exists()
