"""Loading checkpoints: what is refused, and with which message."""

import pytest
import torch
from safetensors.torch import save_file

from ddpm_core import DDPMError, TrainConfig, UNet, UNetConfig, load_checkpoint, train
from ddpm_core.training.checkpoint import save_weights
from ddpm_core.training.resume import RESUME_KEYS, load_resume_state
from ddpm_core.training.run_folder import RunFolder
from tests.helpers import TINY_CONFIG


@pytest.fixture
def checkpoint(tmp_path):
    images = torch.rand(32, 1, 28, 28) * 2 - 1
    train(tmp_path, TrainConfig(epochs=1, batch_size=32, num_steps=50, ema_decay=None), TINY_CONFIG, images=images,
          device="cpu", progress=False)
    return tmp_path / "model.safetensors"


@pytest.mark.slow
def test_a_checkpoint_loads_with_its_schedule_and_metadata(checkpoint):
    loaded = load_checkpoint(checkpoint)
    assert loaded.model.config == TINY_CONFIG
    assert loaded.schedule.num_steps == 50
    assert loaded.metadata["epoch"] == 1
    assert not loaded.model.training


def test_loading_a_missing_file_says_where_to_get_one(tmp_path):
    with pytest.raises(DDPMError, match=r"No checkpoint at .*nowhere.safetensors\. Pass the model.safetensors"):
        load_checkpoint(tmp_path / "nowhere.safetensors")


def test_loading_a_truncated_file_is_refused(checkpoint, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    with pytest.raises(DDPMError, match="could not be read: it is truncated or corrupt"):
        load_checkpoint(truncated)


def test_loading_a_corrupt_file_is_refused(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file at all" * 10)
    with pytest.raises(DDPMError, match="truncated or corrupt"):
        load_checkpoint(corrupt)


def test_loading_weights_of_another_architecture_is_refused(checkpoint, tmp_path):
    other = UNet(UNetConfig(channels=(8, 16, 16), time_freq_dim=8, time_embed_dim=16))
    metadata = {"epoch": 1, "schedule": {"num_steps": 50}}
    save_weights(tmp_path / "other.safetensors", other, metadata)
    with pytest.raises(DDPMError, match="holds a different architecture"):
        load_checkpoint(tmp_path / "other.safetensors", expected_config=TINY_CONFIG)
    # Weights that do not fit the architecture named in their own metadata.
    tensors = {k: v.contiguous() for k, v in other.state_dict().items()}
    import json

    meta = {"ddpm_core": json.dumps({"model_config": TINY_CONFIG.to_dict(), "schedule": {"num_steps": 50}})}
    save_file(tensors, tmp_path / "mismatch.safetensors", metadata=meta)
    with pytest.raises(DDPMError, match="do not fit the architecture its metadata describes .*wrong shapes"):
        load_checkpoint(tmp_path / "mismatch.safetensors")


def test_a_safetensors_file_from_elsewhere_is_refused(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(DDPMError, match="not a ddpm_core checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")


def test_asking_for_ema_weights_that_were_not_kept_is_refused(checkpoint):
    with pytest.raises(DDPMError, match="has no EMA weights"):
        load_checkpoint(checkpoint, use_ema=True)


def test_resume_state_loads_with_weights_only(checkpoint):
    state = torch.load(checkpoint.parent / "resume.pt", weights_only=True)
    assert set(state) == set(RESUME_KEYS)
    assert state["epoch"] == 1 and state["noise_shards"] == len(state["generators"]) == 1


def test_a_resume_state_whose_noise_shards_disagree_with_its_generators_is_refused(checkpoint, tmp_path):
    state = load_resume_state(checkpoint.parent / "resume.pt")
    torch.save({**state, "noise_shards": 2}, tmp_path / "resume.pt")
    with pytest.raises(DDPMError, match="cannot be used: the entries noise_shards have the wrong type or size"):
        load_resume_state(tmp_path / "resume.pt")


def test_the_run_folder_of_a_weights_file_is_its_folder_or_the_run_above_epochs(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert RunFolder.holding(run.weights) == run
    assert RunFolder.holding(run.epoch_file(7)) == run
    assert run.epoch_file(7).name == "epoch_007.safetensors"

