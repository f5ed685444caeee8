"""`export` never replaces a file it did not write: the graph, its schedule file and the seeds file are checked,
by name and by content (read only from a small regular file), before the checkpoint is even loaded; its files are
written together or not at all, and every refusal's advice works when followed."""

import errno
import json
import os
from pathlib import Path

import pytest

from ddpm_core.app.export import FORMAT
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import read_small_file, store_entry
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
    code, output = run_cli(export_argv(tiny_run, tmp_path / "d" / "model.onnx", "--seeds", "3"), capsys)  # as advised
    assert code == 0, output


@pytest.mark.parametrize("count", ["150000", "1000000000000", "-1"])
def test_a_seed_count_out_of_range_is_refused_before_anything_is_written(count, tiny_run, tmp_path, capsys):
    code, output = run_cli(export_argv(tiny_run, tmp_path / "model.onnx", "--seeds", count), capsys)
    assert_clean_failure(code, output, 2, "--seeds", "from 0 to 10,000")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_as_output_gets_a_model_file_name_as_example(tiny_run, tmp_path, capsys):
    code, output = run_cli(export_argv(tiny_run, tmp_path), capsys)
    assert_clean_failure(code, output, 2, "model.onnx")
    assert "samples.png" not in output


# Files beside the output that are not files: never opened, never read without end ---------------------------


def special_file(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "link-to-dev-zero"])
def test_a_schedule_file_that_is_not_a_file_is_never_read_and_the_advice_works(kind, tiny_run, tmp_path, capsys):
    graph = tmp_path / "model.onnx"
    graph.write_bytes(b"someone else's graph")
    special_file(kind, tmp_path / "model.json")
    code, output = run_cli(export_argv(tiny_run, graph), capsys)
    assert_clean_failure(code, output, 2, str(graph), "already exists", "Choose a new --out path")
    assert graph.read_bytes() == b"someone else's graph"
    code, output = run_cli(export_argv(tiny_run, tmp_path / "fresh.onnx"), capsys)  # the advice, followed
    assert code == 0, output


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "link-to-dev-zero"])
def test_a_seeds_file_that_is_not_a_file_is_never_read(kind, tiny_run, tmp_path, capsys):
    special_file(kind, tmp_path / "seeds.json")
    code, output = run_cli(export_argv(tiny_run, tmp_path / "model.onnx", "--seeds", "2"), capsys)
    assert_clean_failure(code, output, 2, str(tmp_path / "seeds.json"), "another folder", "move")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seeds.json"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["fifo", "link-to-dev-zero", "dev-zero", "folder", "too-large", "missing"])
def test_the_guarded_read_refuses_anything_but_a_small_regular_file(kind, tmp_path):
    path = {"dev-zero": Path("/dev/zero")}.get(kind, tmp_path / "record.json")
    if kind in ("fifo", "link-to-dev-zero"):
        special_file(kind, path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "too-large":
        path.write_bytes(b" " * 101)
    words = {"fifo": "a FIFO", "link-to-dev-zero": "symbolic link to /dev/zero", "dev-zero": "a character device",
             "folder": "a folder", "too-large": "101 bytes long", "missing": "No such file"}[kind]
    with pytest.raises(DDPMError, match="Cannot read the test record") as error:
        read_small_file(path, 100, "the test record")
    assert words in str(error.value)


@pytest.mark.timeout(30)
def test_the_guarded_read_follows_a_link_only_when_asked_and_still_refuses_a_device_behind_it(tmp_path):
    (tmp_path / "real.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    assert read_small_file(tmp_path / "link.json", 100, "a record", follow_links=True) == b"{}"
    with pytest.raises(DDPMError, match="symbolic link"):
        read_small_file(tmp_path / "link.json", 100, "a record")
    special_file("link-to-dev-zero", tmp_path / "zero.json")
    with pytest.raises(DDPMError, match="a character device"):
        read_small_file(tmp_path / "zero.json", 100, "a record", follow_links=True)


@pytest.mark.timeout(30)
def test_a_results_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "results.json")
    with pytest.raises(DDPMError, match="a FIFO"):
        store_entry(tmp_path / "results.json", "run", 1)
    (tmp_path / "results.json").rename(tmp_path / "pipe")  # the advice of a results file that cannot be read
    store_entry(tmp_path / "results.json", "run", 1)
    assert json.loads((tmp_path / "results.json").read_text()) == {"run": 1}


# The seeds file's fixed name: advice that works -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("remedy", ["another-folder", "move-it-away", "force"])
def test_a_foreign_seeds_file_gets_advice_that_works_when_followed(remedy, tiny_run, tmp_path, capsys):
    seeds = tmp_path / "seeds.json"
    seeds.write_text('{"seeds": "my notes"}\n')
    code, output = run_cli(export_argv(tiny_run, tmp_path / "model.onnx", "--seeds", "2"), capsys)
    assert_clean_failure(code, output, 2, "choose an --out in another folder", f"move {seeds} away", "--force")
    code, output = run_cli(export_argv(tiny_run, tmp_path / "other.onnx", "--seeds", "2"), capsys)
    assert code == 2, output  # a new --out in the same folder meets the same file, so the advice never says that
    if remedy == "another-folder":
        out = tmp_path / "elsewhere" / "model.onnx"
        flags = ()
    else:
        out = tmp_path / "model.onnx"
        flags = ("--force",) if remedy == "force" else ()
        if remedy == "move-it-away":
            seeds.rename(tmp_path / "my-notes.json")
    code, output = run_cli(export_argv(tiny_run, out, "--seeds", "2", *flags), capsys)
    assert code == 0, output
    assert json.loads((out.parent / "seeds.json").read_text())["seeds"] == [0, 1]


@pytest.mark.slow
def test_a_large_seeds_file_is_recognised_as_the_exports_own_on_a_rerun(tiny_run, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert run_cli(export_argv(tiny_run, out, "--seeds", "1200"), capsys)[0] == 0  # 5 MB, over the JSON bound
    code, output = run_cli(export_argv(tiny_run, out, "--seeds", "1200"), capsys)
    assert code == 0, output


# A full disk, an unwritable folder and Ctrl-C: nothing half-written, and a rerun works -------------------------


@pytest.mark.slow
def test_a_disk_that_fills_up_mid_export_leaves_the_earlier_export_whole_and_a_rerun_works(
        tiny_run, exported, tmp_path, capsys, monkeypatch):
    for name in ("model.onnx", "model.json", "seeds.json"):
        (tmp_path / name).write_bytes((exported / name).read_bytes())
    meta = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**meta, "earlier": True}))  # unlike what a new export writes
    before = folder_hashes(tmp_path)
    real_write_bytes, calls = Path.write_bytes, []

    def fills_up(self, data):
        calls.append(self)
        if len(calls) == 2:  # the second file of the export
            real_write_bytes(self, data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", fills_up)
    code, output = run_cli(export_argv(tiny_run, tmp_path / "model.onnx", "--seeds", "2"), capsys)
    assert_clean_failure(code, output, 2, "Not enough space", "is intact")
    assert folder_hashes(tmp_path) == before  # no orphan graph, no temporary file
    monkeypatch.setattr(Path, "write_bytes", real_write_bytes)
    code, output = run_cli(export_argv(tiny_run, tmp_path / "model.onnx", "--seeds", "2"), capsys)
    assert code == 0, output


@pytest.mark.slow
def test_a_disk_without_room_for_the_graph_stops_before_the_check_and_another_disk_works(
        tiny_run, tmp_path, capsys, monkeypatch):
    import shutil

    import ddpm_core.app.export

    full, roomy = tmp_path / "full", tmp_path / "roomy"
    full.mkdir()
    real_disk_usage = shutil.disk_usage

    def disk_usage(path):
        usage = real_disk_usage(path)
        return usage._replace(free=1000) if Path(path).resolve() == full.resolve() else usage

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    real_onnx_bytes = ddpm_core.app.export.onnx_bytes
    monkeypatch.setattr(ddpm_core.app.export, "onnx_bytes", lambda *a: pytest.fail("exported before the check"))
    code, output = run_cli(export_argv(tiny_run, full / "model.onnx"), capsys)
    assert_clean_failure(code, output, 2, "Not enough space", "MB are needed", "--out path on another disk")
    assert list(full.iterdir()) == []
    monkeypatch.setattr(ddpm_core.app.export, "onnx_bytes", real_onnx_bytes)
    code, output = run_cli(export_argv(tiny_run, roomy / "model.onnx"), capsys)  # the advice, followed
    assert code == 0, output


@pytest.mark.slow
def test_an_unwritable_folder_at_write_time_gets_advice_that_works(tiny_run, tmp_path, capsys, monkeypatch):
    blocked = tmp_path / "blocked"
    real_replace = os.replace

    def replace(source, target):
        if Path(target).parent == blocked:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    code, output = run_cli(export_argv(tiny_run, blocked / "model.onnx"), capsys)
    assert_clean_failure(code, output, 2, "Permission denied", "nothing was written", "--out in another folder")
    assert list(blocked.iterdir()) == []
    code, output = run_cli(export_argv(tiny_run, tmp_path / "other" / "model.onnx"), capsys)
    assert code == 0, output


@pytest.mark.slow
@pytest.mark.parametrize("when", ["during-the-check", "while-writing"])
def test_ctrl_c_during_export_says_export_and_the_same_command_then_works(when, tiny_run, tmp_path, capsys,
                                                                        monkeypatch):
    import ddpm_core.app.export

    argv = export_argv(tiny_run, tmp_path / "model.onnx", "--seeds", "2")
    real_write_bytes, calls = Path.write_bytes, []

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    def interrupt_the_last_file(self, data):
        calls.append(self)
        return interrupt() if len(calls) == 3 else real_write_bytes(self, data)

    if when == "during-the-check":
        monkeypatch.setattr(ddpm_core.app.export, "compare_with_torch", interrupt)
    else:
        monkeypatch.setattr(Path, "write_bytes", interrupt_the_last_file)
    code, output = run_cli(argv, capsys)
    assert_clean_failure(code, output, 130, "nothing was written", "run the same command again to export")
    assert "evaluate" not in output
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    code, output = run_cli(argv, capsys)  # the advice, followed
    assert code == 0, output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.onnx", "seeds.json"]
