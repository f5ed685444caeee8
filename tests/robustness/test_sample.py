"""`sample` and `evaluate` against careless input: outputs written atomically, never through a link or over a
file the user has, settings bounded where they are parsed, and every input (free space, the schedule, the judge)
checked before the long sampling, with advice that works when followed."""

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_core import TrainConfig, train
from ddpm_core.diffusion.unet import UNetConfig
from tests.helpers import (
    assert_clean_failure,
    digest,
    folder_hashes,
    rewrite,
    run_cli,
)


def sample_argv(run: Path, out: Path, *flags: str) -> list[str]:
    return ["sample", "--checkpoint", str(run), "--num-samples", "2", "--out", str(out), "--no-progress", *flags]


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cond") / "run"
    images, labels = torch.rand(32, 1, 28, 28) * 2 - 1, torch.arange(32) % 10
    config = UNetConfig(channels=(8, 8, 16), time_freq_dim=8, time_embed_dim=16, num_classes=10)
    train(out, TrainConfig(epochs=1, batch_size=32, num_steps=20, ema_decay=None), config, images=images,
          labels=labels, device="cpu", progress=False)
    return out


# Data loss -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npy", ".png"])
def test_an_existing_output_is_refused_without_force_and_replaced_with_it(suffix, tiny_run, tmp_path, capsys):
    out = tmp_path / f"old{suffix}"
    out.write_bytes(b"the user's own file")
    before = digest(out)
    code, output = run_cli(sample_argv(tiny_run, out), capsys)
    assert_clean_failure(code, output, 2, "already exists", "nothing was overwritten", "--force")
    assert digest(out) == before
    assert run_cli(sample_argv(tiny_run, out, "--force"), capsys)[0] == 0
    assert digest(out) != before


@pytest.mark.parametrize("suffix", [".npy", ".png"])
def test_a_link_as_output_never_writes_through_to_its_target(suffix, tiny_run, tmp_path, capsys):
    target = tmp_path / "someone_elses.txt"
    target.write_text("keep me")
    link = tmp_path / f"link{suffix}"
    link.symlink_to(target)
    before = digest(target)
    code, output = run_cli(sample_argv(tiny_run, link), capsys)
    assert_clean_failure(code, output, 2, "symbolic link", str(target), "--force", "the link itself")
    assert digest(target) == before and link.is_symlink()
    assert run_cli(sample_argv(tiny_run, link, "--force"), capsys)[0] == 0
    assert digest(target) == before  # the link was replaced by the samples, its target untouched
    assert not link.is_symlink() and link.stat().st_size > 0


@pytest.mark.parametrize("suffix", [".npy", ".png"])
def test_a_full_disk_keeps_the_old_output_and_says_how_much_was_needed(suffix, tiny_run, tmp_path, capsys,
                                                                      monkeypatch):
    out = tmp_path / "full" / f"old{suffix}"
    out.parent.mkdir()
    assert run_cli(sample_argv(tiny_run, out), capsys)[0] == 0
    before = folder_hashes(out.parent)

    def no_space(*args, **kwargs):
        file = args[0] if suffix == ".npy" else args[1]
        if hasattr(file, "write"):
            file.write(b"\0" * 4096)  # a part went to disk before it filled up
        else:
            Path(file).write_bytes(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    if suffix == ".npy":
        monkeypatch.setattr(np, "save", no_space)
    else:
        from PIL import Image

        monkeypatch.setattr(Image.Image, "save", no_space)
    code, output = run_cli(sample_argv(tiny_run, out, "--force"), capsys)
    assert_clean_failure(code, output, 2, "Not enough space", "MB were needed", "is intact")
    assert folder_hashes(out.parent) == before  # the old file whole, and no temporary file left behind


def test_an_upper_case_npy_suffix_writes_exactly_the_named_file(tiny_run, tmp_path, capsys):
    out = tmp_path / "X.NPY"
    code, output = run_cli(sample_argv(tiny_run, out), capsys)
    assert code == 0 and f"to {out}" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.NPY"]
    assert np.load(out).shape == (2, 28, 28)


# Settings refused where they are parsed ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--noise-scale", "1e300"], ["--noise-scale", "from 0 to 2"]),
        (["--guidance", "1e300"], ["--guidance", "from 0 to 20"]),
        (["--labels", "1,,,2,"], ["--labels", "no empty entries"]),
        (["--device", "cpu:7"], ["--device", "only CUDA devices take an index"]),
    ],
    ids=["noise-scale", "guidance", "empty-labels", "cpu-index"],
)
def test_settings_out_of_range_are_refused_before_anything_is_loaded(flags, words, tmp_path, capsys):
    code, output = run_cli(sample_argv(tmp_path / "no-such-run", tmp_path / "s.png", *flags), capsys)
    assert_clean_failure(code, output, 2, *words)
    assert "weights" not in output  # the user's setting is named, never the model blamed
    assert list(tmp_path.iterdir()) == []


def test_train_into_an_empty_out_path_is_refused(tmp_path, capsys):
    os.chdir(tmp_path)
    code, output = run_cli(["train", "--out", ""], capsys)
    assert_clean_failure(code, output, 2, "--out", "empty path")
    assert list(tmp_path.iterdir()) == []


def test_more_labels_than_samples_are_refused_not_dropped(conditional_run, tmp_path, capsys):
    code, output = run_cli(sample_argv(conditional_run, tmp_path / "s.png", "--labels", "1,2,3,4"), capsys)
    assert_clean_failure(code, output, 2, "--labels lists 4 classes", "--num-samples is 2", "--num-samples 4")
    assert not (tmp_path / "s.png").exists()
    argv = sample_argv(conditional_run, tmp_path / "s.npy", "--labels", "1,2,3,4") + ["--num-samples", "4"]
    code, output = run_cli(argv, capsys)  # the advice, followed
    assert code == 0, output
    assert np.load(tmp_path / "s.npy").shape == (4, 28, 28)


def test_guidance_zero_draws_unconditional_samples_from_a_conditional_model(conditional_run, tmp_path, capsys):
    out = tmp_path / "s.npy"
    code, output = run_cli(sample_argv(conditional_run, out, "--guidance", "0"), capsys)
    assert code == 0, output
    assert np.load(out).shape == (2, 28, 28)


def test_a_conditional_model_asked_for_nothing_gets_advice_that_works(conditional_run, tmp_path, capsys):
    out = tmp_path / "s.png"
    code, output = run_cli(sample_argv(conditional_run, out, "--guidance", "2"), capsys)
    assert_clean_failure(code, output, 2, "conditional model", "--label/--labels", "--guidance 0 instead")
    code, output = run_cli(sample_argv(conditional_run, out, "--guidance", "0"), capsys)  # the advice, followed
    assert code == 0, output


# evaluate: everything checked before the sampling --------------------------------------------------------------


def test_evaluate_without_mnist_stops_before_sampling_and_creates_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    import ddpm_core.measure.evaluation

    missing = tmp_path / "nonexistent" / "data"
    monkeypatch.setenv("DDPM_DATA_DIR", str(missing))
    monkeypatch.setattr(ddpm_core.measure.evaluation, "generate",
                        lambda *a, **k: pytest.fail("sampled before the check"))
    monkeypatch.setattr("torchvision.datasets.MNIST.mirrors", ["http://127.0.0.1:9/"])  # no download here
    code, output = run_cli(["evaluate", "--checkpoint", str(tiny_run), "--num-samples", "4", "--no-progress"], capsys)
    assert_clean_failure(code, output, 2, "MNIST was not found", "DDPM_DATA_DIR")
    assert not (tmp_path / "nonexistent").exists()


def test_evaluate_with_an_unusable_classifier_stops_before_sampling(tiny_run, tmp_path, capsys, monkeypatch):
    import ddpm_core.measure.evaluation

    monkeypatch.setattr(ddpm_core.measure.evaluation, "generate",
                        lambda *a, **k: pytest.fail("sampled before the check"))
    code, output = run_cli(["evaluate", "--checkpoint", str(tiny_run), "--num-samples", "4", "--no-progress",
                            "--classifier", str(tmp_path / "judge.safetensors")], capsys)
    assert_clean_failure(code, output, 2, str(tmp_path / "judge.safetensors"))


# Moved from the command-line robustness tests ----------------------------------------


@pytest.mark.parametrize("scale", [float("nan"), 1e15], ids=["nan-weights", "weights-times-1e15"])
@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_non_finite_samples_stop_with_status_1_and_write_nothing(command, scale, tiny_run, tmp_path, capsys):
    broken = rewrite(tiny_run / "model.safetensors", tmp_path / "broken.safetensors", scale=scale)
    out = tmp_path / "grid.png"
    argv = [command, "--checkpoint", str(broken), "--num-samples", "4", "--sampler", "ddim", "--steps", "3",
            "--no-progress"] + (["--out", str(out)] if command == "sample" else [])
    code, output = run_cli(argv, capsys)
    assert_clean_failure(code, output, 1, str(broken), "non-finite values", "nothing was written")
    assert not out.exists()


@pytest.mark.parametrize("where", ["a-folder", "under-a-file", "unwritable"])
def test_sample_output_that_cannot_be_written_is_refused_before_sampling(where, tiny_run, tmp_path, capsys):
    if where == "a-folder":
        out = tmp_path / "grid.png"
        out.mkdir()
        words = ["is a folder"]
    elif where == "under-a-file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "grid.png"
        words = ["is a file, not a folder"]
    else:
        out, words = Path("/sys/grid.png"), ["not writable"]
    code, output = run_cli(["sample", "--checkpoint", str(tiny_run), "--out", str(out), "--no-progress"], capsys)
    assert_clean_failure(code, output, 2, str(out), *words)


@pytest.mark.parametrize("command", ["sample", "evaluate"])
@pytest.mark.parametrize("flags", [["--steps", "5"], ["--eta", "0.5"]])
def test_ddim_options_without_the_ddim_sampler_are_refused(command, flags, tiny_run, tmp_path, capsys):
    argv = [command, "--checkpoint", str(tiny_run), *flags]
    argv += ["--out", str(tmp_path / "g.png")] if command == "sample" else []
    code, output = run_cli(argv, capsys)
    assert_clean_failure(code, output, 2, f"{flags[0]} applies only to the DDIM sampler", "--sampler ddim")


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--steps", "5"], ["--eta", "0.5"]])
def test_a_ddim_option_without_the_ddim_sampler_samples_once_the_sampler_is_added(flags, slow_run, tmp_path, capsys):
    argv = ["sample", "--checkpoint", str(slow_run), "--num-samples", "2", "--out", str(tmp_path / "g.png"),
            "--no-progress", *flags]
    assert run_cli(argv, capsys)[0] == 2
    code, output = run_cli(argv + ["--sampler", "ddim"], capsys)  # the advice, followed (T = 1000: DDIM's 50 fit)
    assert code == 0, output


def test_ema_on_a_run_without_ema_speaks_to_the_command_line(tiny_run, tmp_path, capsys):
    code, output = run_cli(["sample", "--checkpoint", str(tiny_run), "--ema", "--out", str(tmp_path / "g.png")],
                           capsys)
    assert_clean_failure(code, output, 2, "has no EMA weights", "Sample without --ema", "--ema-decay")


# Checked before the sampling: free space, the schedule, the judge ----------------------------------------------


@pytest.mark.parametrize("suffix", [".npy", ".png"])
def test_a_disk_without_room_for_the_samples_stops_before_sampling_and_another_disk_works(
        suffix, tiny_run, tmp_path, capsys, monkeypatch):
    import shutil

    import ddpm_core.diffusion.samplers

    full = tmp_path / "full"
    full.mkdir()
    real_disk_usage, real_generate = shutil.disk_usage, ddpm_core.diffusion.samplers.generate

    def disk_usage(path):
        usage = real_disk_usage(path)
        return usage._replace(free=1000) if Path(path).resolve() == full.resolve() else usage

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    monkeypatch.setattr(ddpm_core.diffusion.samplers, "generate", lambda *a, **k: pytest.fail("sampled first"))
    out = full / "not" / "yet" / f"grid{suffix}"  # the folders still to be made are on the full disk
    code, output = run_cli(sample_argv(tiny_run, out), capsys)
    assert_clean_failure(code, output, 2, str(out), "Not enough space", "MB are needed", "another disk")
    assert list(full.iterdir()) == []
    monkeypatch.setattr(ddpm_core.diffusion.samplers, "generate", real_generate)
    code, output = run_cli(sample_argv(tiny_run, tmp_path / "roomy" / f"grid{suffix}"), capsys)  # the advice
    assert code == 0, output


@pytest.mark.slow
def test_the_size_estimate_bounds_the_written_file(tiny_run, tmp_path, capsys):
    from ddpm_core.app.sample_command import _output_bytes

    for count, suffix in ((2, ".npy"), (9, ".png"), (17, ".npy"), (17, ".png")):
        out = tmp_path / f"{count}{suffix}"
        argv = ["sample", "--checkpoint", str(tiny_run), "--num-samples", str(count), "--out", str(out),
                "--no-progress"]
        assert run_cli(argv, capsys)[0] == 0
        assert out.stat().st_size <= _output_bytes(count, out)


def test_a_setting_named_as_the_suspect_of_non_finite_samples_can_be_ruled_out_as_advised(tiny_run, tmp_path,
                                                                                            capsys):
    broken = rewrite(tiny_run / "model.safetensors", tmp_path / "broken.safetensors", scale=1e15)
    code, output = run_cli(sample_argv(broken, tmp_path / "s.png", "--noise-scale", "1.5"), capsys)
    assert_clean_failure(code, output, 1, "with --noise-scale 1.5", "--noise-scale 1")
    code, output = run_cli(sample_argv(broken, tmp_path / "s.png", "--noise-scale", "1"), capsys)  # as advised
    assert_clean_failure(code, output, 1, str(broken), "Its weights are damaged")  # the checkpoint is the cause
    assert "--noise-scale" not in output


def _with_schedule(run: Path, target: Path, num_steps: int) -> Path:
    from tests.helpers import stored_metadata

    metadata = stored_metadata(run / "model.safetensors")
    metadata["schedule"]["num_steps"] = metadata["train_config"]["num_steps"] = num_steps
    return rewrite(run / "model.safetensors", target, metadata=metadata)


@pytest.mark.parametrize("command", ["sample", "evaluate", "export"])
def test_a_schedule_no_sampler_can_run_is_refused_by_name_not_blamed_on_the_weights(command, run_copy, capsys):
    _with_schedule(run_copy, run_copy / "model.safetensors", 100_000)
    out = run_copy.parent / ("grid.png" if command == "sample" else "model.onnx")
    argv = [command, "--checkpoint", str(run_copy)] + (["--out", str(out)] if command != "evaluate" else [])
    code, output = run_cli(argv, capsys)
    assert_clean_failure(code, output, 2, "100,000 steps", "samplers cannot use", "alpha_bar_T", "not its weights")
    assert "damaged or diverged" not in output and not out.exists()


def test_the_schedule_refusal_points_at_a_file_that_samples(run_copy, tmp_path, capsys):
    _with_schedule(run_copy, run_copy / "model.safetensors", 10_000)  # alpha_bar_T = 1e-44: denormal
    code, output = run_cli(sample_argv(run_copy / "model.safetensors", tmp_path / "s.png"), capsys)
    assert_clean_failure(code, output, 2, "samplers cannot use", "another epoch's file")
    suggested = output.split("(such as ")[1].split(")")[0]
    code, output = run_cli(sample_argv(Path(suggested), tmp_path / "s.png"), capsys)  # the advice, followed
    assert code == 0, output


def test_a_schedule_at_the_edge_of_float32_still_samples(run_copy, tmp_path, capsys):
    _with_schedule(run_copy, run_copy / "model.safetensors", 5_000)  # alpha_bar_T = 1e-22
    code, output = run_cli(sample_argv(run_copy, tmp_path / "s.npy", "--sampler", "ddim", "--steps", "5"), capsys)
    assert code == 0, output


@pytest.mark.parametrize("judge", ["/dev/zero", "folder", "unwritable-folder"])
def test_the_judges_retrain_hint_names_a_writable_place_and_the_trainer_accepts_it(
        judge, tiny_run, tmp_path, capsys, monkeypatch):
    import shlex

    import ddpm_core.measure.evaluation
    import ddpm_core.measure.train_classifier

    if judge == "folder":
        judge = tmp_path / "judges"
        judge.mkdir()
    elif judge == "unwritable-folder":
        judge = Path("/sys/judge.safetensors")
    monkeypatch.setenv("DDPM_CLASSIFIER", str(judge))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ddpm_core.measure.evaluation, "generate", lambda *a, **k: pytest.fail("sampled first"))
    code, output = run_cli(["evaluate", "--checkpoint", str(tiny_run), "--num-samples", "4", "--no-progress"], capsys)
    assert_clean_failure(code, output, 2, str(judge), "ddpm_core.measure.train_classifier --out")
    command = shlex.split(output.split("train one with `")[1].split("`")[0])
    suggested = Path(command[command.index("--out") + 1])
    assert not str(suggested.resolve()).startswith(("/dev", "/sys")) and suggested.parent.resolve() == tmp_path
    reached = []
    monkeypatch.setattr(ddpm_core.measure.train_classifier, "train_classifier",
                        lambda out, **k: reached.append(out) or {"test_accuracy": 1.0, "test_images": 1,
                                                                 "wall_time_s": 0})
    assert ddpm_core.measure.train_classifier.main(command[3:]) == 0  # the hint, followed past its checks
    assert reached == [suggested]
    code, output = run_cli(["sample", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "g.png"), "--num-samples",
                            "2", "--no-progress"], capsys)  # the advice, followed
    assert code == 0, output
