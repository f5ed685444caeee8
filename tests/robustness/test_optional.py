"""The optional dependencies (torchmetrics for `evaluate`, onnx and onnxruntime for `export`) are checked before any
work, and the refusal names the install command that works where the user is; followed, that command gets further."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm_core.utils import extras
from tests.helpers import REPO, assert_clean_failure, needs_mnist, run_cli


def without(monkeypatch, *names: str) -> None:
    """Make ``import name`` (and of its submodules) fail here as it does where the package is not installed."""
    for name in names:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.setitem(sys.modules, loaded, None)
        monkeypatch.setitem(sys.modules, name, None)


def suggested_command(output: str) -> list[str]:
    return shlex.split(re.search(r"with `([^`]*)`", output).group(1))


def evaluate_argv(run: Path) -> list[str]:
    return ["evaluate", "--checkpoint", str(run), "--num-samples", "4", "--no-progress"]


def export_argv(run: Path, out: Path) -> list[str]:
    return ["export", "--checkpoint", str(run), "--out", str(out)]


def test_evaluate_without_torchmetrics_stops_before_loading_anything(tiny_run, tmp_path, capsys, monkeypatch):
    import ddpm_core.measure.evaluation

    without(monkeypatch, "torchmetrics")
    for step in ("load_checkpoint", "load_classifier", "load_mnist", "generate"):
        monkeypatch.setattr(ddpm_core.measure.evaluation, step, lambda *a, **k: pytest.fail("worked first"))
    code, output = run_cli(evaluate_argv(tiny_run), capsys)
    assert_clean_failure(code, output, 2, "evaluate", "needs torchmetrics", "[book]", "nothing was done")
    assert output.count("\n") == 1


@pytest.mark.parametrize("missing", [("onnx",), ("onnxruntime",), ("onnx", "onnxruntime")])
def test_export_without_onnx_stops_before_loading_anything_and_writes_nothing(missing, tiny_run, tmp_path, capsys,
                                                                              monkeypatch):
    import ddpm_core.app.export

    without(monkeypatch, *missing)
    monkeypatch.setattr(ddpm_core.app.export, "load_checkpoint", lambda *a, **k: pytest.fail("loaded first"))
    code, output = run_cli(export_argv(tiny_run, tmp_path / "model.onnx"), capsys)
    assert_clean_failure(code, output, 2, f"export needs {' and '.join(missing)}", "[export]", "nothing was done")
    assert "OnnxExporterError" not in output and output.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_an_installed_but_broken_dependency_says_why_it_cannot_be_imported(monkeypatch):
    def broken_import(name, *args, **kwargs):
        raise ModuleNotFoundError("No module named 'lightning_utilities'", name="lightning_utilities")

    monkeypatch.setattr(extras.importlib, "import_module", broken_import)
    with pytest.raises(extras.DDPMError, match="installed but cannot be imported: No module named 'lightning_"):
        extras.require(("torchmetrics.image.fid",), "evaluate")


# The install command, where the user is --------------------------------------------------------------------------


def test_in_the_checkouts_root_the_command_installs_this_checkout(monkeypatch):
    monkeypatch.chdir(REPO)
    assert extras.install_command("book").endswith(' install -e ".[book]"')


def test_elsewhere_the_command_names_the_checkout_by_its_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert extras.install_command("export").endswith(f' install -e "{REPO}[export]"')


def test_outside_a_checkout_the_command_installs_the_package_from_the_index(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "someone-else"\n')
    monkeypatch.setattr(extras, "CHECKOUT", tmp_path)
    assert extras.install_command("book").endswith(' install "ddpm-core[book]"')


@pytest.mark.parametrize("pip_on_path", ["this-pythons", "another-pythons", "none"])
def test_the_command_uses_the_pip_of_the_python_that_runs_the_package(pip_on_path, tmp_path, monkeypatch):
    python = Path(sys.executable)
    found = {"this-pythons": str(python.parent / "pip"), "another-pythons": "/opt/other/bin/pip", "none": None}
    monkeypatch.setattr(extras.shutil, "which", lambda name: found[pip_on_path])
    monkeypatch.chdir(tmp_path)
    command = shlex.split(extras.install_command("book"))
    if pip_on_path == "this-pythons":
        assert command[:2] == ["pip", "install"]
    else:
        assert Path(command[0]).resolve() == python.resolve() and command[1:4] == ["-m", "pip", "install"]


# The command, followed ------------------------------------------------------------------------------------------


def dry_run(command: list[str], cwd: Path, report: Path) -> dict:
    """Run the suggested pip command as a dry run that needs no network: what it would install, and with which
    extras, from where the message was printed."""
    at = command.index("install") + 1
    flags = ["--dry-run", "--no-index", "--no-build-isolation", "--quiet", "--report", str(report)]
    done = subprocess.run([*command[:at], *flags, *command[at:]], cwd=cwd, capture_output=True, text=True,
                          timeout=240, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert done.returncode == 0, done.stderr
    (installed,) = json.loads(report.read_text())["install"]
    return installed


@pytest.mark.slow
@pytest.mark.timeout(600)
@needs_mnist
@pytest.mark.parametrize("where", ["repository-root", "another-folder"])
def test_the_suggested_install_brings_torchmetrics_and_evaluate_then_gets_further(where, tiny_run, tmp_path, capsys,
                                                                                 monkeypatch):
    cwd = REPO if where == "repository-root" else tmp_path
    monkeypatch.chdir(cwd)
    with monkeypatch.context() as blocked:
        without(blocked, "torchmetrics")
        code, output = run_cli(evaluate_argv(tiny_run), capsys)
    assert code == 2
    installed = dry_run(suggested_command(output), cwd, tmp_path / "report.json")
    assert installed["metadata"]["name"] == "ddpm-core" and installed["requested_extras"] == ["book"]
    assert any(r.startswith("torchmetrics") and 'extra == "book"' in r for r in installed["metadata"]["requires_dist"])
    code, output = run_cli(evaluate_argv(tiny_run), capsys)  # with torchmetrics there, as the install leaves it
    assert code == 0 and "Frechet" in output, output


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_suggested_install_brings_onnx_and_export_then_gets_further(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as blocked:
        without(blocked, "onnx", "onnxruntime")
        code, output = run_cli(export_argv(tiny_run, tmp_path / "model.onnx"), capsys)
    assert code == 2
    installed = dry_run(suggested_command(output), tmp_path, tmp_path / "report.json")
    assert installed["metadata"]["name"] == "ddpm-core" and installed["requested_extras"] == ["export"]
    brought = {r.split(">")[0] for r in installed["metadata"]["requires_dist"] if 'extra == "export"' in r}
    assert brought == {"onnx", "onnxruntime"}
    code, output = run_cli(export_argv(tiny_run, tmp_path / "model.onnx"), capsys)
    assert code == 0, output
