"""Hostile or odd checkpoint and classifier files: exit status 2 and one clear paragraph, never a traceback.

Every file is checked before a byte of its weights is mapped: the path's type (a FIFO is never opened), the
safetensors header (read by the package itself, bounded in size and depth), the metadata's types, and the
tensors' names, shapes and sizes against the architecture. The files that were there before keep their hashes.
"""

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from ddpm_core.training.checkpoint import load_checkpoint
from ddpm_core.training.safetensors_guard import read_safetensors_header
from tests.helpers import (
    CLASSIFIER,
    REPO,
    assert_clean_failure,
    digest,
    rewrite,
    run_cli,
    stored_metadata,
)

BOOK_CHECKPOINTS = sorted((REPO / "book" / "checkpoints").glob("*.safetensors"))
COMMANDS = ["sample", "evaluate", "export"]
HUGE = 100_000_000_000  # F32 elements: 400 GB, declared by a sparse file that takes no disk


def _argv(command: str, checkpoint: Path, tmp_path: Path) -> list[str]:
    """A quick run of ``command`` (if it ever got past loading): two samples, two DDIM steps."""
    if command == "export":
        return ["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx")]
    argv = [command, "--checkpoint", str(checkpoint), "--num-samples", "2", "--sampler", "ddim", "--steps", "2",
            "--no-progress"]
    return argv + (["--out", str(tmp_path / "o.png")] if command == "sample" else [])


def _fingerprints(folder: Path) -> dict[str, str]:
    """Every file's SHA-256; a sparse giant is fingerprinted by its size, time and first megabyte instead."""
    result = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        info = path.stat()
        if info.st_size < 1 << 30:
            result[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            with open(path, "rb") as file:
                head = hashlib.sha256(file.read(1 << 20)).hexdigest()
            result[str(path.relative_to(folder))] = f"{head} {info.st_size} {info.st_mtime_ns}"
    return result


def _run_and_check(argv: list[str], capsys, folder: Path, *words: str) -> str:
    before = _fingerprints(folder)
    code, output = run_cli(argv, capsys)
    assert_clean_failure(code, output, 2, *words)
    assert _fingerprints(folder) == before
    assert not (folder / "o.png").exists() and not (folder / "m.onnx").exists()
    return output


def _split(path: Path) -> tuple[dict, bytes]:
    """A safetensors file's JSON header and its data."""
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _join(path: Path, header: dict, data: bytes, data_bytes: int | None = None) -> Path:
    """Write a safetensors file by hand; ``data_bytes`` extends it (sparsely) to that much data."""
    text = json.dumps(header).encode()
    with open(path, "wb") as file:
        file.write(len(text).to_bytes(8, "little") + text + data)
        if data_bytes is not None:
            file.truncate(8 + len(text) + data_bytes)
    return path


def _with_extra_tensor(source: Path, target: Path, shape: list[int], dtype: str = "F32") -> Path:
    """``source`` with one more tensor at the end of its data, declared in its header; the file is sparse."""
    header, data = _split(source)
    size = {"F32": 4, "I32": 4}[dtype]
    end = len(data)
    count = 1
    for n in shape:
        count *= n
    header["extra"] = {"dtype": dtype, "shape": shape, "data_offsets": [end, end + count * size]}
    return _join(target, header, data, end + count * size)


# 1. Metadata nested 200,000 levels deep ------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_deeply_nested_metadata_is_refused_without_exhausting_the_stack(command, tiny_run, tmp_path, capsys):
    deep = rewrite(tiny_run / "model.safetensors", tmp_path / "deep.safetensors",
                   raw="[" * 200_000 + "]" * 200_000)
    output = _run_and_check(_argv(command, deep, tmp_path), capsys, tmp_path, str(deep), "unusable metadata",
                            "200,000 levels deep", "train again")
    assert "RecursionError" not in output


@pytest.mark.parametrize(
    "change, words",
    [
        ({"has_ema": "yes"}, ["has_ema must be true or false"]),
        ({"epoch": [1]}, ["epoch must be a whole number"]),
        ({"loss_history": {"a": 1}}, ["loss_history must be a list of numbers"]),
        ({"train_config": "lr=1"}, ["train_config must be an object"]),
        ({"format": "x" * 10_000}, ["does not know", "..."]),
    ],
    ids=["has_ema-string", "epoch-list", "loss_history-object", "train_config-string", "format-10kB"],
)
def test_metadata_fields_of_the_wrong_type_are_named(change, words, tiny_run, tmp_path, capsys):
    metadata = {**stored_metadata(tiny_run / "model.safetensors"), **change}
    bad = rewrite(tiny_run / "model.safetensors", tmp_path / "bad.safetensors", metadata)
    output = _run_and_check(_argv("sample", bad, tmp_path), capsys, tmp_path, str(bad), *words)
    assert len(output) < 2000  # a huge value is cut short, not echoed


# 2. Classifier metadata that is not an object ------------------------------------------------------------------


@pytest.mark.parametrize("raw, kind", [("[1]", "JSON list"), ('"str"', "JSON string"), ("[" * 100_000, "levels deep")])
def test_classifier_metadata_that_is_not_an_object_is_refused_naming_the_file(raw, kind, tiny_run, tmp_path,
                                                                               capsys):
    judge = tmp_path / "judge.safetensors"
    save_file(load_file(str(CLASSIFIER)), str(judge), metadata={"ddpm_core": raw})
    argv = [*_argv("evaluate", tiny_run, tmp_path), "--classifier", str(judge)]
    _run_and_check(argv, capsys, tmp_path, f"MNIST classifier {judge} has unusable metadata", kind,
                   "python -m ddpm_core.measure.train_classifier --out")


# 3. Headers that lie: a 400 GB sparse file, and other impossible declarations ----------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_a_sparse_400_gb_file_is_refused_before_it_is_mapped(command, tiny_run, tmp_path, capsys):
    sparse = _with_extra_tensor(tiny_run / "model.safetensors", tmp_path / "sparse.safetensors", [HUGE])
    assert sparse.stat().st_size > 400e9
    _run_and_check(_argv(command, sparse, tmp_path), capsys, tmp_path, str(sparse), "400.0 GB",
                   "'extra' alone", "nothing of it was loaded")


def test_a_sparse_400_gb_committed_checkpoint_is_refused(tmp_path, capsys):
    source = REPO / "book" / "checkpoints" / "ddpm_mnist.safetensors"
    sparse = _with_extra_tensor(source, tmp_path / "sparse.safetensors", [HUGE])
    _run_and_check(_argv("sample", sparse, tmp_path), capsys, tmp_path, str(sparse), "400.0 GB")


def test_a_sparse_400_gb_classifier_is_refused_before_it_is_mapped(tiny_run, tmp_path, capsys):
    sparse = _with_extra_tensor(CLASSIFIER, tmp_path / "judge.safetensors", [HUGE])
    argv = [*_argv("evaluate", tiny_run, tmp_path), "--classifier", str(sparse)]
    _run_and_check(argv, capsys, tmp_path, str(sparse), "do not fit MNISTClassifier", "'extra'",
                   "python -m ddpm_core.measure.train_classifier --out")


def _lying_header(variant: str, source: Path, target: Path) -> Path:
    header, data = _split(source)
    first = min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    if variant == "header-length-2**62":
        raw = bytearray(source.read_bytes())
        raw[:8] = (2**62).to_bytes(8, "little")
        target.write_bytes(bytes(raw))
        return target
    if variant == "bytes-appended":
        return _join(target, header, data + b"\0" * 64)
    if variant == "cut-short":
        return _join(target, header, data[:-64])
    if variant == "shape-disagrees-with-offsets":
        header[first]["shape"] = [s + 1 for s in header[first]["shape"]]
    elif variant == "overlapping-tensors":
        begin, end = header[first]["data_offsets"]
        header["extra"] = {"dtype": "F32", "shape": [(end - begin) // 4], "data_offsets": [begin, end]}
    elif variant == "unknown-dtype":
        header[first]["dtype"] = ["F32"]
    elif variant == "header-not-json":
        text = b"{not json at all"
        target.write_bytes(len(text).to_bytes(8, "little") + text)
        return target
    elif variant == "metadata-not-strings":
        header["__metadata__"] = {"ddpm_core": {"format": "ddpm_core/1"}}
    elif variant == "deep-header":
        header[first]["shape"] = [[[[[1]]]]]
    return _join(target, header, data)


@pytest.mark.parametrize(
    "variant, words",
    [
        ("header-length-2**62", ["more than the"]),
        ("bytes-appended", ["has bytes appended"]),
        ("cut-short", ["cut short"]),
        ("shape-disagrees-with-offsets", ["does not match its shape"]),
        ("overlapping-tensors", ["starts at byte"]),
        ("unknown-dtype", ["unknown dtype"]),
        ("header-not-json", ["not valid JSON"]),
        ("metadata-not-strings", ["__metadata__ is not an object of strings"]),
        ("deep-header", ["levels deep"]),
    ],
)
def test_a_header_that_lies_is_refused_as_corrupt(variant, words, tiny_run, tmp_path, capsys):
    bad = _lying_header(variant, tiny_run / "model.safetensors", tmp_path / "bad.safetensors")
    _run_and_check(_argv("sample", bad, tmp_path), capsys, tmp_path, str(bad), "truncated or corrupt", *words)


@pytest.mark.parametrize("dtype, shape, words", [("F32", [4], ["do not fit", "unexpected extra"]),
                                                 ("I32", [4], ["not floating-point weights", "'extra' (I32)"])])
def test_a_tensor_the_architecture_lacks_is_refused(dtype, shape, words, tiny_run, tmp_path, capsys):
    extra = _with_extra_tensor(tiny_run / "model.safetensors", tmp_path / "extra.safetensors", shape, dtype)
    _run_and_check(_argv("sample", extra, tmp_path), capsys, tmp_path, str(extra), *words)


def test_ema_weights_that_do_not_fit_are_refused(tiny_run, tmp_path, capsys):
    header, data = _split(tiny_run / "model.safetensors")
    first = next(k for k in header if k != "__metadata__")
    header["ema." + first] = {**header[first], "data_offsets": header[first]["data_offsets"]}
    # A lone EMA tensor: it needs its own bytes, so it goes at the end of the data.
    begin, end = header[first]["data_offsets"]
    header["ema." + first]["data_offsets"] = [len(data), len(data) + end - begin]
    bad = _join(tmp_path / "ema.safetensors", header, data + data[begin:end])
    _run_and_check(_argv("sample", bad, tmp_path), capsys, tmp_path, str(bad), "do not fit", "missing ema.")


# 4. A folder or a FIFO given as the checkpoint -----------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_without_model_safetensors_says_what_it_holds(command, tiny_run, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    (folder / "plots").mkdir()
    _run_and_check(_argv(command, folder, tmp_path), capsys, tmp_path, str(folder),
                   "is a folder without model.safetensors", "it holds: notes.txt, plots/",
                   "python -m ddpm_core train --out DIR")


def test_a_folder_of_weights_files_suggests_one_of_them(tiny_run, tmp_path, capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "epoch_7.safetensors").write_bytes((tiny_run / "model.safetensors").read_bytes())
    output = _run_and_check(_argv("sample", folder, tmp_path), capsys, tmp_path, "it holds: epoch_7.safetensors")
    suggested = output.split("such as ")[1].split(",")[0]
    assert suggested == str(folder / "epoch_7.safetensors")
    assert run_cli(_argv("sample", Path(suggested), tmp_path), capsys)[0] == 0  # the advice works


def test_an_empty_folder_is_called_empty(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    _run_and_check(_argv("sample", folder, tmp_path), capsys, tmp_path, "it is empty")


class _Blocked(Exception):
    pass


def _alarm(signum, frame):
    raise _Blocked("the FIFO was opened: the command blocked waiting for a writer")


@pytest.fixture
def fifo(tmp_path):
    """A FIFO with no writer, and an alarm that fails the test instead of hanging it if the FIFO is opened."""
    path = tmp_path / "model.safetensors"
    os.mkfifo(path)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    yield path
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_fifo_is_refused_without_being_opened(command, fifo, tmp_path, capsys):
    _run_and_check(_argv(command, fifo, tmp_path), capsys, tmp_path, str(fifo), "is not a regular file (a FIFO)",
                   "was not opened", "python -m ddpm_core train --out DIR")


def test_a_folder_whose_model_safetensors_is_a_fifo_is_refused(fifo, tmp_path, capsys):
    _run_and_check(_argv("sample", fifo.parent, tmp_path), capsys, tmp_path, str(fifo), "(a FIFO)")


@pytest.mark.parametrize("what", ["fifo", "folder"])
def test_a_fifo_or_folder_as_classifier_is_refused(what, fifo, tiny_run, tmp_path, capsys):
    judge = fifo if what == "fifo" else tmp_path
    words = ["is not a regular file (a FIFO)"] if what == "fifo" else ["is a folder, not a classifier file",
                                                                        "it holds: model.safetensors"]
    argv = [*_argv("evaluate", tiny_run, tmp_path), "--classifier", str(judge)]
    _run_and_check(argv, capsys, tmp_path, f"No MNIST classifier at {judge}", *words, str(CLASSIFIER))


def test_a_dangling_symbolic_link_says_where_it_points(tmp_path, capsys):
    link = tmp_path / "model.safetensors"
    link.symlink_to(tmp_path / "gone.safetensors")
    _run_and_check(_argv("sample", link, tmp_path), capsys, tmp_path, f"No checkpoint at {link}",
                   "symbolic link to", "which does not exist")


# 5. Impossible betas -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("betas", [(0.5, 0.02), (1e-4, 1.0), (0.0, 0.02), (-0.1, 0.02)],
                         ids=["start-above-end", "end-is-1", "start-is-0", "start-negative"])
@pytest.mark.parametrize("command", COMMANDS)
def test_impossible_betas_name_the_checkpoint(command, betas, tiny_run, tmp_path, capsys):
    metadata = stored_metadata(tiny_run / "model.safetensors")
    metadata["schedule"].update(beta_start=betas[0], beta_end=betas[1])
    bad = rewrite(tiny_run / "model.safetensors", tmp_path / "betas.safetensors", metadata)
    _run_and_check(_argv(command, bad, tmp_path), capsys, tmp_path, f"The checkpoint {bad}",
                   "noise schedule is impossible", "0 < beta_start <= beta_end < 1",
                   f"beta_start={betas[0]}, beta_end={betas[1]}", "train again")


# What still works ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [*BOOK_CHECKPOINTS, CLASSIFIER], ids=lambda p: p.name)
def test_the_committed_files_pass_the_header_check(path):
    header = read_safetensors_header(path)
    assert header.data_bytes > 0 and json.loads(header.metadata["ddpm_core"])["format"].startswith("ddpm_core/")


def test_the_committed_checkpoint_loads_raw_and_ema_weights():
    path = REPO / "book" / "checkpoints" / "ddpm_mnist.safetensors"
    raw, ema = load_checkpoint(path), load_checkpoint(path, use_ema=True)
    assert raw.metadata == ema.metadata and raw.metadata["has_ema"]
    assert any((a != b).any() for a, b in zip(raw.model.parameters(), ema.model.parameters(), strict=True))


# 6. The judge's file and a checkpoint are never taken for each other; metadata that cannot be used ----------


def test_the_classifier_command_does_not_overwrite_an_existing_file(run_copy, capsys):
    from ddpm_core.measure.train_classifier import main as classifier_main

    target = run_copy / "model.safetensors"
    before = digest(target)
    code = classifier_main(["--out", str(target), "--epochs", "1", "--no-progress"])
    assert_clean_failure(code, "".join(capsys.readouterr()), 2, "already exists", "nothing was overwritten",
                         "--force")
    assert digest(target) == before


def test_a_wrong_classifier_file_hints_at_a_new_path_only(run_copy, capsys):
    checkpoint = run_copy / "model.safetensors"
    before = digest(checkpoint)
    code, output = run_cli(["evaluate", "--checkpoint", str(run_copy), "--classifier", str(checkpoint),
                            "--num-samples", "2", "--sampler", "ddim", "--steps", "2", "--no-progress"], capsys)
    assert_clean_failure(code, output, 2, "not an MNIST classifier",
                         "python -m ddpm_core.measure.train_classifier --out ")
    hinted = Path(output.split("python -m ddpm_core.measure.train_classifier --out ")[1].split("`")[0])
    assert not hinted.exists() and hinted != checkpoint
    assert digest(checkpoint) == before


def test_a_huge_network_in_the_metadata_is_refused_before_any_allocation(tiny_run, tmp_path, capsys):
    metadata = stored_metadata(tiny_run / "model.safetensors")
    metadata["model_config"]["channels"] = [65536, 65536, 65536]
    huge = rewrite(tiny_run / "model.safetensors", tmp_path / "huge.safetensors", metadata)
    started = time.monotonic()
    code, output = run_cli(["sample", "--checkpoint", str(huge), "--out", str(tmp_path / "g.png"), "--sampler", "ddim",
                            "--steps", "2", "--num-samples", "2", "--no-progress"], capsys)
    assert_clean_failure(code, output, 2, str(huge), "architecture it names is refused", "1024")
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_the_classifier_passed_as_checkpoint_is_named(command, tmp_path, capsys):
    argv = [command, "--checkpoint", str(CLASSIFIER), "--no-progress"]
    argv += ["--out", str(tmp_path / "g.png")] if command == "sample" else []
    code, output = run_cli(argv, capsys)
    assert_clean_failure(code, output, 2, "is the MNIST classifier", "not a diffusion model", "--classifier")


def _metadata_variants(metadata: dict) -> dict[str, tuple[str, list[str]]]:
    """name -> (raw JSON text, key words of the message)."""
    def with_config(**changes):
        return json.dumps({**metadata, "model_config": {**metadata["model_config"], **changes}})

    lacking = {k: v for k, v in metadata.items() if k != "model_config"}
    misspelt = {**metadata["model_config"]}
    misspelt["chanels"] = misspelt.pop("channels")
    return {
        "not-json": ("{'format': 1", ["not valid JSON"]),
        "a-list": ("[1, 2, 3]", ["JSON list, not an object"]),
        "no-model-config": (json.dumps(lacking), ["model_config is missing"]),
        "extra-key": (with_config(depth=3), ["unknown keys ['depth']"]),
        "misspelt-key": (json.dumps({**metadata, "model_config": misspelt}), ["unknown keys ['chanels']"]),
        "wrong-type": (with_config(channels="8,8,16"), ["model_config['channels'] must be a list"]),
        "bool-for-int": (with_config(num_groups=True), ["model_config['num_groups'] must be a whole number"]),
        "schedule-type": (json.dumps({**metadata, "schedule": {"num_steps": "20"}}), ["num_steps must be"]),
        "unknown-format": (json.dumps({**metadata, "format": "ddpm_core/99"}), ["'ddpm_core/99'", "does not know"]),
    }


@pytest.mark.parametrize("variant", list(_metadata_variants({"model_config": {"channels": []}})))
def test_unusable_metadata_is_explained(variant, tiny_run, tmp_path, capsys):
    raw, words = _metadata_variants(stored_metadata(tiny_run / "model.safetensors"))[variant]
    bad = rewrite(tiny_run / "model.safetensors", tmp_path / "bad.safetensors", raw=raw)
    out = tmp_path / "g.png"
    code, output = run_cli(["sample", "--checkpoint", str(bad), "--out", str(out), "--sampler", "ddim", "--steps",
                            "2", "--num-samples", "2", "--no-progress"], capsys)
    assert_clean_failure(code, output, 2, str(bad), *words)
    assert not out.exists()


def test_a_schedule_other_than_the_training_one_is_warned_about(tiny_run, tmp_path, capsys):
    metadata = stored_metadata(tiny_run / "model.safetensors")
    metadata["schedule"]["num_steps"] = 10
    edited = rewrite(tiny_run / "model.safetensors", tmp_path / "edited.safetensors", metadata)
    code, output = run_cli(["sample", "--checkpoint", str(edited), "--out", str(tmp_path / "g.npy"), "--sampler",
                            "ddim", "--steps", "2", "--num-samples", "2", "--no-progress"], capsys)
    assert code == 0 and "Traceback" not in output
    assert "warning: The schedule in" in output and "num_steps 10 (trained with 20)" in output
