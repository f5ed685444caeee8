"""The scripts around the package refuse careless input as ``python -m ddpm_core`` does.

The sample sets' and bugs' command lines, the live panel's packer, the judge's training, the ablations,
the benchmarks and the tools: a bad argument, an unusable output path or a damaged file they read is
refused before any work, in one line on stderr (argparse prints its usage above it), with exit status
2, no traceback, and every file left as it was. A message that suggests a command is followed: the
suggested command gets past the check that printed it.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddpm_core.book import checkout, sample_files, sample_sets
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.scripts import run_script
from tests.helpers import REPO, assert_clean_failure, child_env, digest

STORED_SET = REPO / "book" / "samples" / "ddpm1000_ema.npz"


class Reached(Exception):
    """Raised by a stand-in for the first piece of real work: the command got past every check."""


def reach(*args, **kwargs):
    raise Reached


def call(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run a script's ``main`` in this process: (exit status, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(result: tuple[int, str, str], *words: str, code: int = 2) -> None:
    status, out, err = result
    assert_clean_failure(status, out + err, code, *words)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and "error:" in lines[-1], err
    assert sum("error:" in line for line in lines) == 1, err  # one line: argparse's usage comes before it
    assert "error" not in out, out


def run_module(argv: list[str], cwd: Path = REPO, pythonpath: Path | None = None) -> tuple[int, str, str]:
    env = child_env() | ({"PYTHONPATH": str(pythonpath)} if pythonpath else {})
    done = subprocess.run([sys.executable, "-m", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    return done.returncode, done.stdout, done.stderr


def committed(path: str) -> str:
    """The text of ``path`` (relative to the repository) as committed: what `git checkout PATH` restores."""
    done = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{path} is not committed: {done.stderr}"
    return done.stdout


# The sample sets' files and command line.

def _damaged(kind: str, path: Path) -> None:
    """Write a damaged copy of a committed sample set to ``path``."""
    good = STORED_SET.read_bytes()
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
        return
    with np.load(STORED_SET) as stored:
        arrays = {name: stored[name] for name in stored.files}
    meta = json.loads(arrays["meta"].tobytes())
    if kind == "no samples":
        del arrays["samples"]
    elif kind == "meta a list":
        arrays["meta"] = np.frombuffer(b"[1, 2]", np.uint8)
    elif kind == "seconds a string":
        arrays["meta"] = np.frombuffer(json.dumps(meta | {"seconds": "fast"}).encode(), np.uint8)
    elif kind == "meta floats":
        arrays["meta"] = arrays["meta"].astype(np.float32)
    elif kind == "float samples":
        arrays["samples"] = arrays["samples"].astype(np.float32)
    elif kind == "requested too short":
        arrays["requested"] = np.zeros(3, np.uint8)
    np.savez_compressed(path, **arrays)


DAMAGES = ["truncated", "no samples", "meta a list", "seconds a string", "meta floats", "float samples",
           "requested too short"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty store of sample sets of its own, in full mode."""
    folder = tmp_path / "samples"
    folder.mkdir()
    monkeypatch.setattr(sample_sets, "STORE", folder)
    monkeypatch.delenv("DDPM_QUICK", raising=False)
    monkeypatch.delenv("DDPM_REGENERATE", raising=False)
    return folder


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", DAMAGES)
def test_a_damaged_sample_set_is_refused_naming_the_file_and_how_to_make_it_again(kind, store, monkeypatch):
    monkeypatch.setattr(sample_sets, "generate_set", reach)
    path = store / "ddpm1000_ema.npz"
    _damaged(kind, path)
    before = digest(path)
    with pytest.raises(DDPMError) as refused:
        sample_sets.load_samples("ddpm1000_ema", progress=False)
    message = str(refused.value)
    assert str(path) in message and "not a readable sample set" in message and "\n" not in message
    assert "`python -m ddpm_core.book.sample_sets_cli ddpm1000_ema`" in message
    assert "`git checkout book/samples/ddpm1000_ema.npz`" in message
    assert digest(path) == before


@pytest.mark.timeout(60)
def test_the_sets_command_lists_every_set_then_names_the_damaged_files_in_one_line(store, capsys):
    from ddpm_core.book.sample_sets_cli import main

    _damaged("truncated", store / "ddpm1000_ema.npz")
    _damaged("meta a list", store / "dpm20.npz")
    code, out, err = call(main, [], capsys)
    assert_refused((code, out, err), "book/samples/ddpm1000_ema.npz, book/samples/dpm20.npz",
                   "`python -m ddpm_core.book.sample_sets_cli ddpm1000_ema dpm20`")
    assert len(out.splitlines()) == len(sample_sets.SAMPLE_SETS)  # every set listed before the error
    assert "unreadable" in next(line for line in out.splitlines() if line.startswith("ddpm1000_ema "))


@pytest.mark.timeout(30)
def test_the_restore_command_that_a_damaged_set_suggests_names_a_committed_set():
    # `git checkout book/samples/NAME.npz` restores the committed file, which reads back as a set
    listed = subprocess.run(["git", "ls-files", "--error-unmatch", "book/samples/ddpm1000_ema.npz"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    record, _ = sample_files.read_record(STORED_SET)
    assert len(record.samples) == 256


@pytest.mark.timeout(30)
def test_a_fifo_a_folder_or_a_file_that_unpacks_too_large_is_refused_without_reading_it(tmp_path, monkeypatch):
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    (tmp_path / "folder.npz").mkdir()
    for path, words in ((fifo, "not a regular file"), (tmp_path / "folder.npz", "not a regular file"),
                        (tmp_path / "missing.npz", "No such file")):
        with pytest.raises(DDPMError, match=words):
            sample_files.read_record(path)
    monkeypatch.setattr(sample_files, "MAX_UNPACKED_BYTES", 1000)
    with pytest.raises(DDPMError, match="unpacks to"):
        sample_files.read_record(STORED_SET)


@pytest.mark.timeout(30)
def test_the_sets_command_sends_its_errors_to_stderr(capsys):
    from ddpm_core.book.sample_sets_cli import main

    assert_refused(call(main, ["ddpm999"], capsys), "no sample set called 'ddpm999'")
    assert_refused(call(main, ["--settings", "{not json", "--checkpoint", "a", "--into", "b.npz"], capsys),
                   "--settings is not the JSON")
    assert_refused(call(main, ["--settings", '{"what": "x"}'], capsys), "--settings takes --checkpoint and --into")


# The bugs' command line.

@pytest.mark.timeout(60)
def test_the_bugs_command_refuses_bad_arguments_before_any_work(capsys, monkeypatch, tmp_path):
    from ddpm_core.book import bugs_cli

    monkeypatch.setattr(bugs_cli, "train_with", reach)
    assert_refused(call(bugs_cli.main, ["losses"], capsys), "losses takes one weights file")
    assert_refused(call(bugs_cli.main, ["losses", str(tmp_path / "missing.safetensors")], capsys),
                   "No checkpoint at")
    assert_refused(call(bugs_cli.main, ["train", "correct", "--epochs", "0"], capsys), "expected a positive integer")
    assert_refused(call(bugs_cli.main, ["train", "correct", "--epochs", "many"], capsys), "--epochs")
    assert_refused(call(bugs_cli.main, ["train", "reversed-time"], capsys), "not training bugs")
    assert_refused(call(bugs_cli.main, ["list", "extra"], capsys), "list takes no names")
    assert_refused(call(bugs_cli.main, ["frobnicate"], capsys), "invalid choice")


@pytest.mark.timeout(60)
def test_a_training_bug_is_refused_outside_a_git_checkout_before_any_work(capsys, monkeypatch, tmp_path):
    from ddpm_core.book import bugs_cli

    (tmp_path / "book").mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    monkeypatch.setattr(checkout, "REPO", tmp_path)  # the repository's files, unpacked from an archive
    monkeypatch.setattr(bugs_cli, "train_with", reach)
    assert_refused(call(bugs_cli.main, ["train", "images-0-1"], capsys), "git finds no checkout", str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book", "pyproject.toml"]


@pytest.mark.timeout(60)
def test_a_damaged_losses_file_is_refused_before_training_and_the_committed_one_passes(capsys, monkeypatch,
                                                                                          tmp_path):
    from ddpm_core.book import bugs, bugs_cli

    losses = tmp_path / "bug_losses.json"
    monkeypatch.setattr(bugs, "LOSSES", losses)
    monkeypatch.setattr(bugs, "REPO", tmp_path)
    monkeypatch.setattr(bugs_cli, "train_with", reach)
    for text in ("{not json", "[1, 2]"):
        losses.write_text(text)
        assert_refused(call(bugs_cli.main, ["train", "correct"], capsys), str(losses),
                       "`git checkout bug_losses.json`")
        assert losses.read_text() == text
    losses.write_text(committed("book/results/bug_losses.json"))  # what the suggested git checkout restores
    with pytest.raises(Reached):
        bugs_cli.main(["train", "correct"])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_books_commands_refuse_to_run_from_an_installed_package(tmp_path):
    site = tmp_path / "site-packages"  # the package as pip installs it: no book/ and no pyproject.toml beside it
    shutil.copytree(REPO / "ddpm_core", site / "ddpm_core", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    work.mkdir()
    for argv in (["ddpm_core.book.bugs_cli", "train"], ["ddpm_core.book.bugs_cli", "train", "correct"],
                 ["ddpm_core.book.sample_sets_cli"], ["ddpm_core.book.sample_sets_cli", "ddpm1000"]):
        result = run_module(argv, cwd=work, pythonpath=site)
        assert_refused(result, "needs a checkout of the repository", f"{site} has no book", "git clone")
    assert sorted(p.name for p in site.iterdir()) == ["ddpm_core"] and list(work.iterdir()) == []
    assert run_module(["ddpm_core.book.bugs_cli", "list"], cwd=work, pythonpath=site)[0] == 0  # needs no checkout


@pytest.mark.timeout(60)
def test_in_a_clone_of_the_repository_the_books_commands_get_past_the_check():
    # The messages above suggest running in a clone; this working tree is one, and passes the same checks.
    assert checkout.REPO == REPO
    assert checkout.checkout_problem(git=True) is None


# The live panel's packer.

@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv, words", [
    (["nosite"], ["STATIC_DIR nosite is not a folder", "run make book"]),
    (["README.md"], ["STATIC_DIR README.md is not a folder"]),
    (["."], ["Cannot pack the live panel", "onnxruntime-web is not in ort"]),
    ([".", "nodist"], ["ORT_DIST nodist is not a folder"]),
    ([], ["the following arguments are required: STATIC_DIR"]),
    (["a", "b", "c"], ["unrecognized arguments: c"]),
    ([""], ["expected a folder"]),
])
def test_the_live_panel_packer_refuses_a_missing_or_unusable_folder(argv, words, tmp_path):
    (tmp_path / "README.md").write_text("a file")
    assert_refused(run_module(["ddpm_core.app.live", *argv], cwd=tmp_path), *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]


@pytest.mark.timeout(60)
def test_make_book_runs_the_live_panel_packer_on_the_built_book():
    planned = subprocess.run(["make", "-n", "book"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert planned.returncode == 0, planned.stderr
    assert "-m ddpm_core.app.live _build/html/_static" in planned.stdout


# The judge's training.

@pytest.mark.timeout(60)
def test_the_judges_training_checks_its_output_before_training(tmp_path, capsys, monkeypatch):
    from ddpm_core.measure import train_classifier

    monkeypatch.setattr(train_classifier, "train_classifier", reach)
    (tmp_path / "taken.safetensors").write_bytes(b"someone's weights")
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "taken.safetensors")
    for argv, words in (
        (["--out", str(tmp_path)], ["is a folder"]),
        (["--out", str(tmp_path / "taken.safetensors")], ["already exists", "--force"]),
        (["--out", str(tmp_path / "link.safetensors")], ["symbolic link"]),
        (["--out", str(tmp_path / "judge.pt")], ["should end in .safetensors"]),
        (["--out", ""], ["--out is empty"]),
        (["--out", str(tmp_path / "j.safetensors"), "--epochs", "0"], ["expected a positive integer"]),
        (["--out", str(tmp_path / "j.safetensors"), "--seed", str(2**40)], ["expected a seed"]),
    ):
        assert_refused(call(train_classifier.main, argv, capsys), *words)
    assert (tmp_path / "taken.safetensors").read_bytes() == b"someone's weights"
    with pytest.raises(Reached):  # --force, as the message suggests
        train_classifier.main(["--out", str(tmp_path / "taken.safetensors"), "--force"])


# The ablations.

@pytest.fixture
def no_training(monkeypatch):
    from ablations import full, screen

    monkeypatch.chdir(REPO)  # the scripts' default paths are the repository's
    monkeypatch.setattr(screen, "train_and_describe", reach)
    monkeypatch.setattr(full, "train_and_describe", reach)
    monkeypatch.setattr("ddpm_core.measure.evaluation.evaluate_checkpoint", reach)


ABLATIONS = ["screen", "full", "fast_samplers"]


def ablation(name: str):
    import importlib

    return importlib.import_module(f"ablations.{name}").main


def ablation_argv(name: str, results: Path, *more: str) -> list[str]:
    return [*(["--only", "v"] if name == "full" else []), "--results", str(results), *more]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ABLATIONS)
def test_an_ablation_checks_names_numbers_and_files_before_training(name, tmp_path, capsys, no_training):
    main = ablation(name)
    results = tmp_path / "results.json"
    (tmp_path / "notes.json").write_text("the user's notes")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "a file").write_text("not a folder")
    os.mkfifo(tmp_path / "fifo.json")
    cases = [
        (["--only", "nosuch"], ["--only names 'nosuch'", "nothing was trained"]),
        (["--only", ","], ["--only names '', which"]),
        (["--num-samples", "1"], ["expected a number of samples from 2 to 100,000, got 1"]),
        (["--num-samples", "10000000000"], ["from 2 to 100,000"]),
        (["--num-samples", ""], ["expected a number of samples"]),
        (["--results", str(tmp_path / "notes.json")], ["not a results file", "not valid JSON"]),
        (["--results", str(tmp_path / "list.json")], ["not a results file", "JSON list"]),
        (["--results", str(tmp_path / "fifo.json")], ["something other than a file"]),
        (["--results", str(tmp_path)], ["is a folder"]),
        (["--results", str(tmp_path / "results.txt")], ["should be a JSON file"]),
        (["--results", ""], ["expected a file name"]),
    ]
    if name != "fast_samplers":
        cases += [(["--out", str(tmp_path / "a file")], ["is a file, not a folder"]),
                  (["--epochs", "0"], ["expected a positive integer"])]
    else:
        cases += [(["--checkpoint", str(tmp_path / "missing.safetensors")], ["No checkpoint at"])]
    for more, words in cases:
        argv = ablation_argv(name, results, *more)
        if name == "full" and more[:1] == ["--only"]:
            argv = argv[2:]
        assert_refused(call(main, argv, capsys), *words)
    assert (tmp_path / "notes.json").read_text() == "the user's notes" and not results.exists()
    with pytest.raises(Reached):  # a new --results path, as the message suggests, gets to the work
        main(ablation_argv(name, results, "--num-samples", "2"))


@pytest.mark.timeout(60)
def test_the_books_model_is_scored_only_from_the_repositorys_top_folder(tmp_path, capsys, monkeypatch, no_training):
    from ablations import full

    argv = ["--only", "book", "--second-seed-set", "--results", str(tmp_path / "results.json")]
    monkeypatch.chdir(tmp_path)
    assert_refused(call(full.main, argv, capsys), "is not there", "from the repository's top folder")
    monkeypatch.chdir(REPO)  # as the message suggests
    with pytest.raises(Reached):
        full.main(argv)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.timeout(60)
def test_an_ablation_replaces_a_symbolic_link_at_results_and_never_its_target(tmp_path, monkeypatch, capsys):
    from ablations import fast_samplers

    monkeypatch.chdir(REPO)  # the default --checkpoint is the book's

    target = tmp_path / "elsewhere.json"
    target.write_text('{"ddim-10": {"kept": true}}')
    link = tmp_path / "res.json"
    link.symlink_to(target)
    row = {"frechet_distance": 1.0, "confident_fraction": 0.5, "class_counts": [1] * 10, "num_samples": 2}
    monkeypatch.setattr("ddpm_core.measure.evaluation.evaluate_checkpoint", lambda *a, **k: dict(row))
    code, _, err = call(fast_samplers.main, ["--results", str(link), "--only", "dpm-10", "--num-samples", "2"],
                        capsys)
    assert code == 0, err
    assert target.read_text() == '{"ddim-10": {"kept": true}}'  # the file the link pointed to is untouched
    assert not link.is_symlink()
    written = json.loads(link.read_text())
    assert written["ddim-10"] == {"kept": True} and written["dpm-10"]["num_samples"] == 2


@pytest.mark.timeout(60)
def test_every_script_writes_its_results_through_store_entry_or_an_atomic_write():
    # an in-place write (write_text, open(..., "w"), savefig or nbformat.write on the final path) would leave
    # half a file behind a killed run, and would write through a symbolic link into the file it points to
    in_place = (".write_text(", ".write_bytes(", 'open(', "savefig(OUTPUT", "nbformat.write(notebook, path")
    for folder in ("ablations", "benchmarks", "tools"):
        for script in sorted((REPO / folder).glob("*.py")):
            if script.name == "audit_cases.py":  # writes only the cases' inputs, into its scratch folder
                continue
            source = script.read_text()
            assert not [word for word in in_place if word in source], script.name


# The benchmarks.

@pytest.mark.timeout(60)
@pytest.mark.parametrize("module, argv, words", [
    ("training_time", ["--device", "tpu"], ["unknown device 'tpu'"]),
    ("training_time", ["--device", "cpu:1"], ["only CUDA devices take an index"]),
    ("training_time", ["--steps", "0"], ["expected a positive integer"]),
    ("training_time", ["--out", "."], ["--out is empty"]),
    ("training_time", ["--out", "{tmp}"], ["is a folder"]),
    ("training_time", ["--out", "{tmp}/notes.json"], ["already exists", "--force"]),
    ("training_time", ["--out", "{tmp}/t.txt"], ["should end in .json"]),
    ("sampling", ["--device", "tpu"], ["unknown device 'tpu'"]),
    ("sampling", ["--num-samples", "1000000000"], ["from 1 to 100,000"]),
    ("sampling", ["--steps", "1000000000"], ["a number of timesteps T from 1 to 10,000"]),
    ("sampling", ["--steps", "20", "--ddim-steps", "50"], ["--ddim-steps 50 is more than the schedule's T=20"]),
    ("sampling", ["--checkpoint", "{tmp}/missing.safetensors"], ["No checkpoint at"]),
    ("train_throughput", ["--device", "tpu"], ["unknown device 'tpu'"]),
    ("train_throughput", ["--threads", "1,,2"], ["expected thread counts"]),
    ("train_throughput", ["--threads", "0"], ["expected thread counts"]),
    ("train_throughput", ["--threads", "100000"], ["expected thread counts from 1 to 1024"]),
    ("train_throughput", ["--processes", "3"], ["does not split over --processes 3"]),
    ("train_throughput", ["--processes", "-1"], ["a number of processes"]),
    ("train_throughput", ["--batch-size", "1000000000"], ["a batch size"]),
    ("recipe_cost", ["--device", "tpu"], ["unknown device 'tpu'"]),
    ("recipe_cost", ["--reference-minutes", "nan"], ["not a finite number"]),
    ("recipe_cost", ["--reference-minutes", "-1"], ["expected a positive number"]),
    ("live_panel", ["--site", "{tmp}"], ["has no live panel runtime", "run make book"]),
    ("live_panel", ["--site", ""], ["expected a folder"]),
])
def test_a_benchmark_refuses_a_bad_flag_before_timing_anything(module, argv, words, tmp_path, capsys):
    import importlib

    (tmp_path / "notes.json").write_text("the user's notes")
    main = importlib.import_module(f"benchmarks.{module}").main
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert_refused(call(lambda a: run_script(main, a), argv, capsys), *words)
    assert (tmp_path / "notes.json").read_text() == "the user's notes"


@pytest.mark.timeout(60)
def test_the_training_time_estimate_replaces_its_own_file_and_a_forced_one(tmp_path, monkeypatch):
    from benchmarks import training_time

    monkeypatch.setattr(training_time, "load_mnist", reach)
    (tmp_path / "old.json").write_text('{"seconds_per_step": 0.3}')
    (tmp_path / "notes.json").write_text("the user's notes")
    for argv in (["--out", str(tmp_path / "old.json")], ["--out", str(tmp_path / "notes.json"), "--force"]):
        with pytest.raises(Reached):
            training_time.main(argv)


@pytest.mark.timeout(120)
def test_the_sampling_benchmarks_suggestions_get_past_its_checks():
    from benchmarks import sampling

    checkpoint = str(REPO / "book" / "checkpoints" / "ddpm_mnist.safetensors")
    cpu = __import__("torch").device("cpu")
    with pytest.raises(DDPMError, match="Drop --steps, or omit --checkpoint"):
        sampling.model_and_schedule(sampling.parse_args(["--checkpoint", checkpoint, "--steps", "50"]), cpu)
    _, schedule, _ = sampling.model_and_schedule(sampling.parse_args(["--checkpoint", checkpoint]), cpu)
    assert schedule.num_steps == 1000  # without --steps
    assert sampling.model_and_schedule(sampling.parse_args(["--steps", "50"]), cpu)[1].num_steps == 50
    with pytest.raises(DDPMError, match="Pass --ddim-steps 20 or fewer"):
        sampling.model_and_schedule(sampling.parse_args(["--steps", "20", "--ddim-steps", "50"]), cpu)
    assert sampling.model_and_schedule(sampling.parse_args(["--steps", "20", "--ddim-steps", "20"]), cpu)


# The tools.

@pytest.mark.timeout(60)
def test_the_mutation_tests_refuse_an_unknown_mutant_and_an_unusable_results_file(tmp_path, capsys, monkeypatch):
    from tools import mutants

    monkeypatch.setattr(mutants, "copy_with", reach)
    (tmp_path / "notes.json").write_text("the user's notes")
    assert_refused(call(mutants.main, ["--only", "nosuch"], capsys), "not mutants", "ddim-sign")
    assert_refused(call(mutants.main, ["--results", str(tmp_path)], capsys), "is a folder")
    assert_refused(call(mutants.main, ["--results", str(tmp_path / "notes.json")], capsys), "not a results file")
    assert (tmp_path / "notes.json").read_text() == "the user's notes"
    with pytest.raises(Reached):  # a mutant the message lists
        mutants.main(["--only", "ddim-sign", "--results", str(tmp_path / "verdicts.json")])


@pytest.mark.timeout(60)
def test_the_mutation_score_needs_mutmut_and_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    from tools import mutation_score

    monkeypatch.setattr(mutation_score, "BIN", tmp_path)  # no mutmut there
    assert_refused(call(mutation_score.main, [], capsys), "mutmut could not be run", "run make mutation-score")
    assert_refused(call(mutation_score.main, ["--all"], capsys), "unrecognized arguments")
    planned = subprocess.run(["make", "-n", "mutation-score"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert planned.returncode == 0, planned.stderr
    steps = planned.stdout.splitlines()
    assert any("mutmut==" in step for step in steps)  # make installs mutmut, runs it, then the score
    assert [i for i, s in enumerate(steps) if "mutmut run" in s] < [i for i, s in enumerate(steps)
                                                                     if "tools.mutation_score" in s]


@pytest.mark.timeout(60)
def test_executing_cells_refuses_a_bad_notebook_or_cell_and_leaves_the_chapter_alone(tmp_path, capsys, monkeypatch):
    import nbformat

    from tools import execute_cells

    monkeypatch.setattr(execute_cells, "NotebookClient", reach)
    chapter = tmp_path / "chapter.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1"),
                                                   nbformat.v4.new_code_cell("2 + 2")]), chapter)
    before = chapter.read_bytes()
    (tmp_path / "list.ipynb").write_text("[]")
    os.mkfifo(tmp_path / "fifo.ipynb")
    for argv, words in (
        ([str(tmp_path / "missing.ipynb"), "0"], ["is not a notebook file"]),
        ([str(tmp_path / "fifo.ipynb"), "0"], ["is not a notebook file"]),
        ([str(tmp_path / "list.ipynb"), "0"], ["Cannot read", "as a notebook"]),
        ([str(chapter), "5"], ["has 2 cells", "no cell [5]"]),
        ([str(chapter), "-1"], ["expected a whole number, 0 or more"]),
        ([str(chapter)], ["name the cells to run"]),
        ([str(chapter), "0", "--store", "1"], ["--store names cells that are not run: [1]"]),
        ([str(chapter), "0", "--timeout", "0"], ["expected a positive integer"]),
    ):
        assert_refused(call(execute_cells.main, argv, capsys), *words)
    assert chapter.read_bytes() == before
    assert execute_cells.read_notebook(REPO / "book" / "01_forward_process.ipynb").cells  # the message's example


@pytest.mark.timeout(60)
def test_timing_the_chapters_refuses_bad_arguments_and_damaged_results_before_cloning(tmp_path, capsys,
                                                                                       monkeypatch):
    from tools import chapter_times

    monkeypatch.setattr(chapter_times, "fresh_clone", reach)
    results = tmp_path / "chapter_times.json"
    monkeypatch.setattr(chapter_times, "RESULTS", results)
    monkeypatch.setattr(chapter_times, "REPO", tmp_path)
    assert_refused(call(chapter_times.main, ["99_nothing"], capsys), "No chapter called ['99_nothing']")
    assert_refused(call(chapter_times.main, ["--limit", "nan"], capsys), "not a finite number")
    for text in ("{not json", '{"chapters": 3}', '{"chapters": {"01": {"seconds": "long"}}}'):
        results.write_text(text)
        assert_refused(call(chapter_times.main, [], capsys), str(results), "`git checkout chapter_times.json`")
        assert results.read_text() == text
    results.write_text(committed("book/results/chapter_times.json"))  # what the suggested git checkout restores
    with pytest.raises(Reached):
        chapter_times.main([])


@pytest.mark.timeout(60)
def test_a_stale_table_of_chapter_times_suggests_the_command_that_rewrites_it(tmp_path, capsys, monkeypatch):
    from tools import chapter_times

    readme = tmp_path / "README.md"
    readme.write_text("# Book\n\n" + chapter_times.ANCHOR + "\n" + chapter_times.START + "\nold\n"
                      + chapter_times.END + "\n")
    monkeypatch.setattr(chapter_times, "README", readme)
    monkeypatch.setattr(chapter_times, "fresh_clone", reach)
    code, _, err = call(chapter_times.main, ["--check"], capsys)
    assert code == 1 and "stale: run python -m tools.chapter_times" in err
    with pytest.raises(Reached):  # the suggested command gets to its work: timing the chapters in a clone
        chapter_times.main([])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_stale_results_table_is_rewritten_by_the_command_its_message_suggests(tmp_path, capsys, monkeypatch):
    from tools import results_table

    monkeypatch.setattr(results_table, "OUTPUT", tmp_path / "results_table.md")
    monkeypatch.setattr(results_table, "TRAINING_OUTPUT", tmp_path / "training_time.md")
    assert results_table.main(["--check"]) == 1
    assert "stale: run python -m tools.results_table" in capsys.readouterr().err
    assert results_table.main([]) == 0 and results_table.main(["--check"]) == 0


@pytest.mark.timeout(60)
def test_a_missing_training_time_names_the_benchmark_that_measures_it(tmp_path, capsys, monkeypatch):
    from benchmarks import training_time
    from tools import results_table

    monkeypatch.setattr(results_table, "TRAINING_TIME", tmp_path / "training_time.json")
    assert_refused(call(results_table.main, [], capsys), "is missing: run python -m benchmarks.training_time")
    assert not (tmp_path / "training_time.json").exists()
    monkeypatch.chdir(REPO)  # the suggested command, run where the book reads its result, gets to its timing
    monkeypatch.setattr(training_time, "load_mnist", reach)
    with pytest.raises(Reached):
        training_time.main([])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_overview_figure_replaces_a_link_at_its_path_and_never_the_file_it_points_to(tmp_path, monkeypatch,
                                                                                          capsys):
    from tools import overview_figure

    target = tmp_path / "elsewhere.png"
    target.write_bytes(b"someone's picture")
    link = tmp_path / "overview.png"
    link.symlink_to(target)
    monkeypatch.setattr(overview_figure, "OUTPUT", link)
    monkeypatch.setattr(overview_figure, "REPO", tmp_path)
    assert_refused(call(overview_figure.main, ["--out", "x.png"], capsys), "unrecognized arguments")
    assert overview_figure.main([]) == 0
    assert target.read_bytes() == b"someone's picture" and not link.is_symlink()
    assert link.read_bytes().startswith(b"\x89PNG")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("module", ["results_table", "audit_cases", "overview_figure", "mutation_score"])
def test_a_tool_without_options_refuses_an_argument(module, capsys):
    import importlib

    main = importlib.import_module(f"tools.{module}").main
    assert_refused(call(main, ["--frobnicate"], capsys), "unrecognized arguments: --frobnicate")
