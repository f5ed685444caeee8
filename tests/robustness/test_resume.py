"""A resume state that cannot be trusted is refused before the data loads: exit status 2, one line naming the
file and how to go on, the run folder exactly as it was. The advice, followed, works.

The hostile states are a real tiny run's ``resume.pt`` (the ``run_copy`` fixture), loaded with
``weights_only=True``, edited, and saved again with ``torch.save``.
"""

import os
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch

import ddpm_core.training.loop
from ddpm_core.app.cli import main
from ddpm_core.training.resume import MAX_PICKLE_BYTES, load_resume_state
from ddpm_core.utils.errors import DDPMError
from tests.helpers import TINY_FLAGS, assert_clean_failure, folder_hashes, needs_mnist, run_cli

RESUME = ["--resume", "--epochs", "2", "--subset", "64", *TINY_FLAGS]


def _edit(state: dict, change: str) -> None:
    """Apply one hostile ``change`` to a resume state, in place."""
    optimizer, first = state["optimizer"], state["optimizer"]["state"][0]
    edits = {
        "noise_shards-0": lambda: state.update(noise_shards=0),
        "noise_shards-minus-2": lambda: state.update(noise_shards=-2),
        "noise_shards-many": lambda: state.update(noise_shards="many"),
        "generator-float": lambda: state.update(generators=[state["generators"][0].float()]),
        "generator-random-bytes": lambda: state.update(
            generators=[torch.randint(0, 256, state["generators"][0].shape, dtype=torch.uint8)]),
        "torch-rng-zeros": lambda: state["torch_rng"].zero_(),
        "optimizer-two-groups": lambda: optimizer["param_groups"].append(dict(optimizer["param_groups"][0])),
        "optimizer-other-parameters": lambda: optimizer["param_groups"][0].update(params=[0, 1, 2]),
        "optimizer-other-betas": lambda: optimizer["param_groups"][0].update(betas=(2.0, 5.0)),
        "optimizer-moment-shape": lambda: first.update(exp_avg=torch.zeros(3)),
        "optimizer-moment-int64": lambda: first.update(exp_avg=first["exp_avg"].long()),
        "optimizer-step-0": lambda: first.update(step=torch.tensor(0.0)),
        "ema-int64": lambda: state.update(ema={k: v.long() for k, v in state["model"].items()},
                                          train_config={**state["train_config"], "ema_decay": 0.999}),
        "ema-missing": lambda: state.update(train_config={**state["train_config"], "ema_decay": 0.999}),
        "model-nan": lambda: next(iter(state["model"].values())).fill_(float("nan")),
        "loss-history-too-long": lambda: state.update(loss_history=[0.5] * 7),
        "epochs-many": lambda: state.update(train_config={**state["train_config"], "epochs": "many"}),
        "setting-tensor": lambda: state.update(train_config={**state["train_config"], "lr": torch.ones(2)}),
    }
    edits[change]()


# What each message names: the entry, and what is wrong with it.
CASES = {
    "noise_shards-0": ["noise_shards", "noise_shards: 0"],
    "noise_shards-minus-2": ["noise_shards", "noise_shards: -2"],
    "noise_shards-many": ["noise_shards", "noise_shards: 'many'"],
    "generator-float": ["generator state of noise shard 0", "float32", "uint8"],
    "generator-random-bytes": ["generator state of noise shard 0", "no state of torch's generator"],
    "torch-rng-zeros": ["torch_rng is no state of torch's generator"],
    "optimizer-two-groups": ["optimizer holds a list of 2 entries as parameter groups"],
    "optimizer-other-parameters": ["optimizer's parameter group is not the"],
    "optimizer-other-betas": ["not the training loop's Adam", "betas"],
    "optimizer-moment-shape": ["exp_avg of parameter 0 has the shape (3,)"],
    "optimizer-moment-int64": ["exp_avg of parameter 0 holds int64 values, not float32"],
    "optimizer-step-0": ["step count of parameter 0"],
    "ema-int64": ["ema weight", "int64 values, not float32"],
    "ema-missing": ["keep a moving average", "ema entry holds 0 tensors"],
    "model-nan": ["model weight", "NaN"],
    "loss-history-too-long": ["loss_history: a list of 7 entries"],
    "epochs-many": ["train_config: its settings epochs = 'many'"],
    "setting-tensor": ["train_config: its settings lr = a float32 tensor of shape (2,)"],
}


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if the training data is loaded: a resume state is checked before."""

    def load_mnist(*args, **kwargs):
        raise AssertionError("the data was loaded before the resume state was checked")

    monkeypatch.setattr(ddpm_core.training.loop, "load_mnist", load_mnist)


def _one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("change", list(CASES))
def test_a_hostile_resume_state_is_refused_before_the_data_loads_and_left_as_it_was(change, run_copy, no_data,
                                                                                     capsys):
    path = run_copy / "resume.pt"
    state = torch.load(path, weights_only=True)
    _edit(state, change)
    torch.save(state, path)
    before = folder_hashes(run_copy)
    code, output = run_cli(["train", "--out", str(run_copy), *RESUME], capsys)
    assert_clean_failure(code, output, 2, f"The resume state {path} cannot be used", *CASES[change],
                         "Nothing was changed", "another --out folder (the same command without --resume)")
    assert _one_line(output).startswith("error: ")
    assert folder_hashes(run_copy) == before


@pytest.mark.timeout(60)
def test_a_resume_state_as_torch_saves_it_passes_every_check(run_copy):
    assert load_resume_state(run_copy / "resume.pt")["epoch"] == 1


def _declare(path: Path, entry_suffix: str, size: int) -> None:
    """Make the zip archive ``path`` declare ``size`` bytes for its entry ending in ``entry_suffix``, in its local
    and central headers, without holding them: what a zip bomb does."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        name = next(i.filename for i in archive.infolist() if i.filename.endswith(entry_suffix)).encode()
    # (signature, offset of the uncompressed size, offset of the file name) of a local and a central header
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = data.find(signature)
        while start != -1:
            if data[start + name_at: start + name_at + len(name)] == name:
                data[start + size_at: start + size_at + 4] = struct.pack("<I", size)
            start = data.find(signature, start + 4)
    path.write_bytes(bytes(data))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind, words", [
    ("fifo", ["a FIFO", "not a regular file"]),
    ("link-to-dev-zero", ["a character device"]),
    ("sparse-3-gb", ["3,221,225,472 bytes long", "so it was not read"]),
    ("declares-4-gb", ["its archive declares", "bytes of contents"]),
    ("declares-huge-pickle", ["bytes of pickled structure"]),
])
def test_a_resume_state_is_read_only_when_it_is_a_regular_file_of_bounded_size(kind, words, run_copy):
    path = run_copy / "resume.pt"
    if kind in ("fifo", "link-to-dev-zero", "sparse-3-gb"):
        path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "link-to-dev-zero":
            path.symlink_to("/dev/zero")
        else:
            with open(path, "wb") as file:
                file.truncate(3 * 2**30)
    else:
        _declare(path, "data.pkl" if kind == "declares-huge-pickle" else "/0",
                 MAX_PICKLE_BYTES + 1 if kind == "declares-huge-pickle" else 2**32 - 1)
    with pytest.raises(DDPMError) as refused:
        load_resume_state(path)
    message = str(refused.value)
    for word in [str(path), *words, "Nothing was changed", "another --out folder"]:
        assert word in message, message


# Each message's advice, followed --------------------------------------------------------------------------------


@pytest.mark.slow
@needs_mnist
@pytest.mark.timeout(300)
def test_the_advice_on_a_hostile_resume_state_starts_a_new_run_and_its_weights_sample(run_copy, tmp_path, capsys):
    path = run_copy / "resume.pt"
    state = torch.load(path, weights_only=True)
    _edit(state, "noise_shards-many")
    torch.save(state, path)
    code, output = run_cli(["train", "--out", str(run_copy), *RESUME], capsys)
    assert_clean_failure(code, output, 2, "another --out folder (the same command without --resume)",
                         f"pass --checkpoint {run_copy / 'model.safetensors'} to `python -m ddpm_core sample`")
    # The same command without --resume, into another folder, trains a new run.
    other = tmp_path / "other"
    code, output = run_cli(["train", "--out", str(other), *[a for a in RESUME if a != "--resume"]], capsys)
    assert code == 0, output
    assert load_resume_state(other / "resume.pt")["epoch"] == 2
    # The weights stay usable for sampling.
    code, output = run_cli(["sample", "--checkpoint", str(run_copy / "model.safetensors"), "--out",
                            str(tmp_path / "grid.png"), "--num-samples", "2", "--no-progress"], capsys)
    assert code == 0, output


@pytest.mark.slow
@needs_mnist
@pytest.mark.timeout(300)
@pytest.mark.parametrize("blocker", ["weights-fifo", "weights-link-to-dev-zero", "epochs-file"])
def test_a_checkpoint_path_that_is_no_file_is_refused_and_moving_it_out_lets_the_run_resume(blocker, tmp_path,
                                                                                               capsys):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--subset", "64", *TINY_FLAGS]
    assert run_cli([*argv, "--epochs", "1"], capsys)[0] == 0
    blocked = out / ("epochs" if blocker == "epochs-file" else "model.safetensors")
    shutil.move(blocked, tmp_path / "moved")
    if blocker == "weights-fifo":
        os.mkfifo(blocked)
    elif blocker == "weights-link-to-dev-zero":
        blocked.symlink_to("/dev/zero")
    else:
        blocked.write_text("not a folder")
    before = folder_hashes(out)
    code, output = run_cli([*argv, "--epochs", "2", "--resume"], capsys)
    assert_clean_failure(code, output, 2, f"cannot save its checkpoints: {blocked}", "Move it out of",
                         "then resume again", "nothing was changed")
    assert folder_hashes(out) == before and (blocked.is_symlink() or blocked.exists())
    blocked.unlink()  # the advice: move it out, then resume again
    code, output = run_cli([*argv, "--epochs", "2", "--resume"], capsys)
    assert code == 0, output
    assert load_resume_state(out / "resume.pt")["epoch"] == 2


@pytest.fixture(scope="module")
def cosine_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A one-epoch run of the command line with a cosine decay, and its command's options."""
    folder = tmp_path_factory.mktemp("cosine") / "run"
    options = ["--subset", "64", *TINY_FLAGS, "--lr-decay", "cosine"]
    assert main(["train", "--out", str(folder), *options, "--epochs", "1"]) == 0
    return folder, options


@pytest.fixture
def cosine_copy(cosine_run, tmp_path) -> tuple[Path, list[str]]:
    folder, options = cosine_run
    shutil.copytree(folder, tmp_path / "run")
    return tmp_path / "run", options


@pytest.mark.slow
@needs_mnist
@pytest.mark.timeout(300)
def test_more_epochs_for_a_cosine_run_are_refused_and_both_ways_on_work(cosine_copy, tmp_path, capsys):
    out, options = cosine_copy
    before = folder_hashes(out)
    code, output = run_cli(["train", "--out", str(out), *options, "--epochs", "2", "--resume"], capsys)
    assert_clean_failure(code, output, 2, "Resume with --epochs 1", "start a new run with --epochs 2 in another "
                         "--out folder")
    assert folder_hashes(out) == before
    code, output = run_cli(["train", "--out", str(out), *options, "--epochs", "1", "--resume"], capsys)
    assert code == 0 and "trained 1 epochs" in output, output  # resumed: nothing is left of its plan
    code, output = run_cli(["train", "--out", str(tmp_path / "new"), *options, "--epochs", "2"], capsys)
    assert code == 0 and "trained 2 epochs" in output, output


@pytest.mark.slow
@needs_mnist
@pytest.mark.timeout(300)
def test_other_settings_on_resume_are_refused_and_both_ways_on_work(cosine_copy, tmp_path, capsys):
    out, options = cosine_copy
    before = folder_hashes(out)
    code, output = run_cli(["train", "--out", str(out), *options, "--epochs", "1", "--resume", "--lr", "0.001"],
                           capsys)
    assert_clean_failure(code, output, 2, "other settings (lr: 0.002 -> 0.001)", "resume it with its own settings",
                         "another --out folder (without --resume)")
    assert folder_hashes(out) == before
    code, output = run_cli(["train", "--out", str(out), *options, "--epochs", "1", "--resume"], capsys)
    assert code == 0, output
    code, output = run_cli(["train", "--out", str(tmp_path / "new"), *options, "--epochs", "1", "--lr", "0.001"],
                           capsys)
    assert code == 0, output


@pytest.mark.slow
@needs_mnist
@pytest.mark.timeout(300)
def test_a_new_run_into_a_run_folder_is_refused_and_both_ways_on_work(cosine_copy, tmp_path, capsys):
    out, options = cosine_copy
    code, output = run_cli(["train", "--out", str(out), *options, "--epochs", "1"], capsys)
    assert_clean_failure(code, output, 2, "already holds a training run", "Pass --resume", "another --out folder")
    code, output = run_cli(["train", "--out", str(out), *options, "--epochs", "1", "--resume"], capsys)
    assert code == 0, output
    code, output = run_cli(["train", "--out", str(tmp_path / "new"), *options, "--epochs", "1"], capsys)
    assert code == 0, output
