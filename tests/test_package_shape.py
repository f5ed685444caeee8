"""The package's shape: layer folders that hold every module, modules and functions a reader can take in."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ddpm_core"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layers_contract() -> dict:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    assert len(contracts) == 1 and contracts[0]["type"] == "layers", "make layers checks one layers contract"
    return contracts[0]


def test_every_module_lives_in_a_layer_folder_that_the_layers_contract_names():
    contract = layers_contract()
    named = {name.strip() for entry in contract["layers"] for name in entry.split("|")}
    assert contract["exhaustive"] is True
    for path in modules():
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 1:
            assert relative.name in ("__init__.py", "__main__.py"), f"{relative} sits outside the layer folders"
            continue
        assert relative.parts[0] in named, f"{relative}: its folder is not a layer of the contract"


def test_every_layer_folder_says_what_it_holds_and_what_it_may_import():
    for layer in {name.strip() for entry in layers_contract()["layers"] for name in entry.split("|")}:
        doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "May import" in doc, f"ddpm_core/{layer}/__init__.py needs a docstring with 'May import'"
        for module in (PACKAGE / layer).glob("*.py"):
            if module.name != "__init__.py":
                assert module.stem in doc, f"ddpm_core/{layer}/__init__.py's docstring does not list {module.stem}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_longer_than_a_reader_takes_in(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(REPO)} has {lines} lines, over {MAX_MODULE_LINES}: split it"


def function_lengths(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            found.append((f"{node.name} (line {node.lineno})", node.end_lineno - first + 1))
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_is_longer_than_a_reader_takes_in(path):
    long = [f"{name}: {n} lines" for name, n in function_lengths(path) if n > MAX_FUNCTION_LINES]
    assert not long, f"{path.relative_to(REPO)} has functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_length_check_counts_a_function_with_its_decorators_and_docstring(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('@decorator\ndef f():\n    """Doc."""\n    return 1\n', encoding="utf-8")
    assert function_lengths(module) == [("f (line 2)", 4)]
