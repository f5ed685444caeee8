"""The UNet: shapes, the parameter count of the reference run, and time conditioning."""

import torch

from ddpm_core import UNet, UNetConfig, count_parameters


def test_default_unet_has_exactly_324705_parameters():
    assert count_parameters(UNet()) == 324_705


def test_unet_maps_a_batch_of_images_to_the_same_shape():
    model = UNet()
    x = torch.randn(3, 1, 28, 28)
    assert model(x, torch.tensor([1, 500, 1000])).shape == (3, 1, 28, 28)


def test_different_timesteps_give_different_outputs():
    torch.manual_seed(0)
    model = UNet().eval()
    x = torch.randn(1, 1, 28, 28).expand(3, -1, -1, -1)
    out = model(x, torch.tensor([1, 500, 1000]))
    assert (out[0] - out[1]).abs().max() > 1e-4
    assert (out[1] - out[2]).abs().max() > 1e-4


def test_channels_last_gives_the_same_output_as_the_default_layout():
    torch.manual_seed(0)
    model = UNet().eval()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 700])
    reference = model(x, t)
    model = model.to(memory_format=torch.channels_last)
    assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last), t), reference, atol=1e-5)


def test_config_round_trips_through_a_dict():
    config = UNetConfig(channels=(16, 32, 32))
    assert UNetConfig.from_dict(config.to_dict()) == config


def test_each_decoder_level_reads_its_encoder_level_through_the_skip():
    """The UNet's skip connections: the decoder's input at each resolution ends with the encoder's output there."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(channels=(8, 8, 16), time_freq_dim=8, time_embed_dim=16)).eval()
    encoder, decoder_inputs = [], []
    for module in model.down_attention:
        module.register_forward_hook(lambda module, args, out: encoder.append(out.detach().clone()))
    for block in model.up_blocks:
        block.register_forward_pre_hook(lambda module, args: decoder_inputs.append(args[0].detach().clone()))
    with torch.no_grad():
        model(torch.randn(2, 1, 28, 28), torch.tensor([10, 900]))
    assert len(decoder_inputs) == len(encoder) == 3
    for features, skip in zip(decoder_inputs, reversed(encoder), strict=True):
        assert skip.abs().sum() > 0
        assert torch.equal(features[:, -skip.shape[1]:], skip)  # concatenated after the decoder's own channels
