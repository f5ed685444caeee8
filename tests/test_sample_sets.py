"""The stored sample sets of the chapters: what is stored, when it is read and when generated again."""

import json
import shutil

import numpy as np
import pytest
import torch

from ddpm_core.book import sample_sets
from ddpm_core.book.sample_sets import (
    SAMPLE_SETS,
    SampleRecord,
    SampleSet,
    load_samples,
    read_record,
    sample_set,
    write_record,
)
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import sha256_of

pytestmark = pytest.mark.slow


@pytest.fixture
def store(tiny_run, tmp_path, monkeypatch):
    """A repository of its own: the tiny run's weights as the only checkpoint, an empty store, full mode."""
    repo = tmp_path / "repo"
    (repo / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_run / "model.safetensors", repo / "checkpoints" / "tiny.safetensors")
    monkeypatch.setattr(sample_sets, "REPO", repo)
    monkeypatch.setattr(sample_sets, "STORE", repo / "samples")
    monkeypatch.delenv("DDPM_QUICK", raising=False)
    monkeypatch.delenv("DDPM_REGENERATE", raising=False)
    tiny = SampleSet("the tiny run, DDPM", 6, checkpoint="checkpoints/tiny.safetensors", judge_every_10=True,
                     quick={"num_samples": 2})
    monkeypatch.setitem(SAMPLE_SETS, "tiny", tiny)
    return repo


def count_generations(monkeypatch):
    calls = []
    real = sample_sets.generate_set

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(sample_sets, "generate_set", counting)
    return calls


def test_a_set_is_generated_once_then_read_back_within_one_grey_level(store, monkeypatch):
    calls = count_generations(monkeypatch)
    first = load_samples("tiny", progress=False)
    again = load_samples("tiny", progress=False)
    assert len(calls) == 1  # the second call reads the file
    assert (store / "samples" / "tiny.npz").is_file()
    assert first.samples.shape == (6, 1, 28, 28)
    assert torch.equal(first.samples, again.samples)
    assert first.samples.min() >= -1 and first.samples.max() <= 1
    levels = (first.samples + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # 8-bit grey levels
    # the judged trajectory: T = 20, so t = 20, 10, 0, one reading per sample, the last the finished sample
    assert first.timesteps == [20, 10, 0]
    assert first.readings.shape == (3, 6)
    assert first.seconds > 0 and first.threads == torch.get_num_threads()
    assert first.trained["epoch"] == 1 and len(first.trained["loss_history"]) == 1  # the tiny run's one epoch


def test_the_stored_images_are_the_samplers_output_to_within_half_a_grey_level(store):
    from ddpm_core.diffusion.sampling import sample
    from ddpm_core.training.checkpoint import load_checkpoint

    record = load_samples("tiny", progress=False)
    loaded = load_checkpoint(store / "checkpoints" / "tiny.safetensors")
    images, _ = sample(loaded.model, loaded.schedule, num_samples=6, seed=0, progress=False)
    assert (record.samples - images.clamp(-1, 1)).abs().max() <= 0.5 / 127.5 + 1e-6


def test_a_new_checkpoint_or_definition_generates_the_set_again(store, monkeypatch, capsys):
    calls = count_generations(monkeypatch)
    load_samples("tiny", progress=False)
    # another definition: another seed
    load_samples("tiny", progress=False, seed=5)
    assert "generating it again" in capsys.readouterr().out
    # another checkpoint at the same path
    weights = store / "checkpoints" / "tiny.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(data))
    load_samples("tiny", progress=False, seed=5)
    assert len(calls) == 3
    _, meta = read_record(store / "samples" / "tiny.npz")
    assert meta["checkpoint_sha256"] == sha256_of(weights)
    assert meta["definition"]["seed"] == 5


def test_regenerate_mode_generates_even_a_set_that_is_up_to_date(store, monkeypatch):
    calls = count_generations(monkeypatch)
    load_samples("tiny", progress=False)
    monkeypatch.setenv("DDPM_REGENERATE", "1")
    load_samples("tiny", progress=False)
    assert len(calls) == 2


def test_quick_mode_generates_a_few_samples_into_scratch_and_leaves_the_store_alone(store, monkeypatch, tmp_path):
    monkeypatch.setenv("DDPM_QUICK", "1")
    monkeypatch.setenv("DDPM_SCRATCH", str(tmp_path / "scratch"))
    record = load_samples("tiny", progress=False)
    assert len(record.samples) == 2
    assert not (store / "samples").exists()
    assert (tmp_path / "scratch" / "samples" / "tiny.npz").is_file()


def test_quick_mode_takes_the_first_samples_of_the_stored_set_when_the_checkpoint_is_not_there(
        store, monkeypatch, tmp_path):
    full = load_samples("tiny", progress=False)
    (store / "checkpoints" / "tiny.safetensors").unlink()
    monkeypatch.setenv("DDPM_QUICK", "1")
    monkeypatch.setenv("DDPM_SCRATCH", str(tmp_path / "scratch"))
    quick = load_samples("tiny", progress=False)
    assert torch.equal(quick.samples, full.samples[:2]) and torch.equal(quick.readings, full.readings[:, :2])


def test_quick_mode_takes_the_first_samples_of_an_up_to_date_stored_set(store, monkeypatch, tmp_path):
    full = load_samples("tiny", progress=False)
    monkeypatch.setenv("DDPM_QUICK", "1")
    monkeypatch.setenv("DDPM_SCRATCH", str(tmp_path / "scratch"))
    calls = count_generations(monkeypatch)
    assert torch.equal(load_samples("tiny", progress=False).samples, full.samples[:2])
    assert calls == []
    # another definition than the stored one: the quick set is generated
    assert len(load_samples("tiny", progress=False, seed=3).samples) == 2 and len(calls) == 1


def test_a_stored_set_is_read_even_when_its_checkpoint_is_not_there(store, monkeypatch):
    load_samples("tiny", progress=False)
    (store / "checkpoints" / "tiny.safetensors").unlink()
    calls = count_generations(monkeypatch)
    assert len(load_samples("tiny", progress=False).samples) == 6
    assert calls == []


def test_a_set_that_is_neither_stored_nor_generable_says_what_to_do(store):
    (store / "checkpoints" / "tiny.safetensors").unlink()
    with pytest.raises(DDPMError, match="is missing.*git checkout book/samples"):
        load_samples("tiny", progress=False)


def test_unknown_names_and_settings_are_refused_with_the_known_ones():
    with pytest.raises(DDPMError, match="no sample set called 'ddpm999'.*ddpm1000"):
        sample_set("ddpm999")
    with pytest.raises(DDPMError, match=r"\['w'\] are not settings.*guidance"):
        sample_set("guidance_grid", w=2.0)


def test_a_damaged_file_is_refused_with_how_to_restore_it(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(DDPMError, match="broken.npz is not a readable sample set.*generated again"):
        read_record(path)


def test_labels_and_readings_survive_the_round_trip(tmp_path):
    spec = SampleSet("rows", 20, labels="rows", guidance=2.0)
    requested = spec.requested()
    assert requested.tolist() == [d for d in range(10) for _ in range(2)]
    record = SampleRecord(torch.rand(20, 1, 28, 28) * 2 - 1, 1.5, 2, requested, [10, 0],
                          torch.randint(0, 10, (2, 20)))
    write_record(tmp_path / "rows.npz", record, spec, "0" * 64)
    back, meta = read_record(tmp_path / "rows.npz")
    assert torch.equal(back.requested, requested) and torch.equal(back.readings, record.readings)
    assert back.timesteps == [10, 0] and back.seconds == 1.5 and back.threads == 2
    assert meta["definition"]["guidance"] == 2.0 and "what" not in meta["definition"]
    with np.load(tmp_path / "rows.npz") as stored:
        assert stored["samples"].dtype == np.uint8


def test_every_quick_set_is_smaller_than_its_full_set_and_every_checkpoint_is_the_books_or_a_known_run():
    for name, spec in SAMPLE_SETS.items():
        quick = spec.in_quick_mode()
        assert quick.num_samples < spec.num_samples, name
        assert spec.checkpoint.startswith(("book/checkpoints/", sample_sets.EPOCHS_FOLDER, "runs/bugs/")), name
        if spec.labels == "rows":
            assert spec.num_samples % 10 == 0 and quick.num_samples % 10 == 0, name


def test_every_stored_set_was_made_from_the_committed_checkpoint_with_todays_definition():
    stored = sorted(sample_sets.STORE.glob("*.npz"))
    for path in stored:
        assert path.stem in SAMPLE_SETS, f"{path.name} is no longer a defined sample set"
        spec = SAMPLE_SETS[path.stem]
        _, meta = read_record(path)
        assert meta["definition"] == json.loads(json.dumps(spec.definition())), path.name
        checkpoint = sample_sets.REPO / spec.checkpoint
        if checkpoint.exists():  # the epoch checkpoints are not committed
            assert meta["checkpoint_sha256"] == sha256_of(checkpoint), f"{path.name} is out of date"


def test_the_command_lists_the_sets_and_generates_the_named_ones(store, capsys):
    from ddpm_core.book.sample_sets_cli import main

    assert main([]) == 0
    assert "tiny" in capsys.readouterr().out.split("\n")[-2]  # the last set, registered last
    assert sample_sets.status("tiny") == "missing"
    assert main(["tiny"]) == 0
    assert sample_sets.status("tiny") == "stored"
    capsys.readouterr()
    assert main(["tiny", "ddpm999"]) == 2  # refused before anything is generated
    refused = capsys.readouterr()
    assert "no sample set called 'ddpm999'" in refused.err and refused.out == ""


def test_a_set_with_a_bug_is_made_by_the_broken_package_and_stored_as_its_own(store):
    from ddpm_core.book.bugs import bug

    clean = SampleSet("the tiny run, DDPM", 3, checkpoint="checkpoints/tiny.safetensors")
    broken = SampleSet("the tiny run, DDPM, noise at t = 1", 3, checkpoint="checkpoints/tiny.safetensors",
                       bug="noise-at-t1")
    checkpoint = store / "checkpoints" / "tiny.safetensors"
    without = sample_sets.generate_set(clean, checkpoint, progress=False)
    with_bug = sample_sets.generate_set(broken, checkpoint, progress=False)
    # read back from the copy's file: 8-bit images, clipped to [-1, 1]
    gap = (with_bug.samples - without.samples.clamp(-1, 1)).abs()
    # the same noise up to the last step: the images differ by sigma_1 z, a grain of a few grey levels
    sigma_1 = 1e-4 ** 0.5  # the tiny schedule's beta_1
    assert 2 / 255 < gap.max() < 6 * sigma_1 + 1 / 255
    assert "bug" not in clean.definition() and broken.definition()["bug"] == "noise-at-t1"
    assert "/ 127.5 - 1.0" in bug("images-0-1").edits[0].old  # the package itself is left as it was


def test_a_damaged_stored_set_is_generated_again_by_the_command_its_message_suggests(store, capsys):
    from ddpm_core.book.sample_sets_cli import main

    assert main(["tiny"]) == 0
    path = store / "samples" / "tiny.npz"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    capsys.readouterr()
    assert main([]) == 2
    suggested = "`python -m ddpm_core.book.sample_sets_cli tiny`"
    assert suggested in capsys.readouterr().err
    with pytest.raises(DDPMError, match=suggested):
        load_samples("tiny", progress=False)
    assert main(suggested.strip("`").split()[3:]) == 0  # the command, run as suggested, replaces the file
    assert sample_sets.status("tiny") == "stored" and len(read_record(path)[0].samples) == 6
