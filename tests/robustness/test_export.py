"""`export` never replaces a file it did not write: the graph, its schedule file and the seeds file are checked,
by name and by content, before the checkpoint is even loaded."""

import json
from pathlib import Path

import pytest

from ddpm_core.app.export import FORMAT
from tests.helpers import assert_clean_failure, digest, folder_hashes, run_cli


def export_argv(run: Path, out: Path, *flags: str) -> list[str]:
    return ["export", "--checkpoint", str(run), "--out", str(out), *flags]


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    """A folder holding one finished export with seeds: model.onnx, model.json and seeds.json."""
    folder = tmp_path_factory.mktemp("export")
    code = run_cli_plain(export_argv(tiny_run, folder / "model.onnx", "--seeds", "2"))
    assert code == 0
    return folder


def run_cli_plain(argv: list[str]) -> int:
    from ddpm_core.app.cli import main

    return main(argv)


def test_a_foreign_json_beside_the_graph_is_refused_and_kept(tiny_run, tmp_path, capsys):
    package = tmp_path / "package.json"
    package.write_text('{"name": "someone-elses-project"}\n')
    before = folder_hashes(tmp_path)
    code, output = run_cli(export_argv(tiny_run, tmp_path / "package.onnx"), capsys)
    assert_clean_failure(code, output, 2, str(package), "already exists", "nothing was overwritten", "--force")
    assert folder_hashes(tmp_path) == before
    code, output = run_cli(export_argv(tiny_run, tmp_path / "package.onnx", "--force"), capsys)
    assert code == 0, output
    assert json.loads(package.read_text())["format"] == FORMAT


def test_a_foreign_graph_is_refused_and_kept(tiny_run, tmp_path, capsys):
    graph = tmp_path / "model.onnx"
    graph.write_bytes(b"someone else's graph")
    before = digest(graph)
    code, output = run_cli(export_argv(tiny_run, graph), capsys)
    assert_clean_failure(code, output, 2, str(graph), "already exists", "--force")
    assert digest(graph) == before and not (tmp_path / "model.json").exists()


def test_an_earlier_export_is_recognised_by_its_content_and_replaced(tiny_run, exported, tmp_path, capsys):
    folder = tmp_path / "again"
    folder.mkdir()
    for name in ("model.onnx", "model.json", "seeds.json"):
        (folder / name).write_bytes((exported / name).read_bytes())
    code, output = run_cli(export_argv(tiny_run, folder / "model.onnx", "--seeds", "2"), capsys)
    assert code == 0, output
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.onnx", "seeds.json"]


def test_a_foreign_seeds_file_is_refused_and_kept(tiny_run, tmp_path, capsys):
    seeds = tmp_path / "seeds.json"
    seeds.write_text('{"seeds": "my notes"}\n')
    before = folder_hashes(tmp_path)
    code, output = run_cli(export_argv(tiny_run, tmp_path / "model.onnx", "--seeds", "3"), capsys)
    assert_clean_failure(code, output, 2, str(seeds), "already exists", "--force")
    assert folder_hashes(tmp_path) == before


def test_a_model_named_seeds_would_collide_with_its_seeds_file_and_is_refused(tiny_run, tmp_path, capsys):
    code, output = run_cli(export_argv(tiny_run, tmp_path / "d" / "seeds.onnx", "--seeds", "3"), capsys)
    assert_clean_failure(code, output, 2, "same file", "seeds.json", "model.onnx")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("count", ["150000", "1000000000000", "-1"])
def test_a_seed_count_out_of_range_is_refused_before_anything_is_written(count, tiny_run, tmp_path, capsys):
    code, output = run_cli(export_argv(tiny_run, tmp_path / "model.onnx", "--seeds", count), capsys)
    assert_clean_failure(code, output, 2, "--seeds", "from 0 to 10,000")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_as_output_gets_a_model_file_name_as_example(tiny_run, tmp_path, capsys):
    code, output = run_cli(export_argv(tiny_run, tmp_path), capsys)
    assert_clean_failure(code, output, 2, "model.onnx")
    assert "samples.png" not in output
