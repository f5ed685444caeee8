"""The UNet: shapes, the parameter count of the reference run, time conditioning, and the network that
``build_unet`` makes of each configuration, the committed checkpoints' included."""

import pytest
import torch

from ddpm_core import UNet, UNetConfig, count_parameters, load_checkpoint
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.diffusion.unet_variants import ConditionalUNet, SelfAttention, build_unet
from tests.helpers import REPO


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
    for module in model.down_blocks:
        module.register_forward_hook(lambda module, args, out: encoder.append(out.detach().clone()))
    for block in model.up_blocks:
        block.register_forward_pre_hook(lambda module, args: decoder_inputs.append(args[0].detach().clone()))
    with torch.no_grad():
        model(torch.randn(2, 1, 28, 28), torch.tensor([10, 900]))
    assert len(decoder_inputs) == len(encoder) == 3
    for features, skip in zip(decoder_inputs, reversed(encoder), strict=True):
        assert skip.abs().sum() > 0
        assert torch.equal(features[:, -skip.shape[1]:], skip)  # concatenated after the decoder's own channels


# eps_theta of the committed checkpoints at one fixed input: the sum, the sum of magnitudes and four pixels of the
# second image, so that a change in how any of the three networks computes shows here.
PINNED = {
    "ddpm_mnist": (None, 357.8150757662952, 1657.3858302496374, [-0.994208, 1.104609, 1.158373, -0.162756]),
    "reference_recipe": (None, 272.7034390065819, 1755.7766749132425, [-1.02062, 1.083062, 1.154248, -0.17366]),
    "ddpm_mnist_conditional": ([3, 10], 528.8762094024569, 1757.0563024971634,
                               [-1.003513, 1.109663, 1.16338, -0.166843]),
}


@pytest.mark.parametrize("name", PINNED)
def test_the_committed_checkpoints_load_into_their_networks_and_predict_the_pinned_noise(name):
    labels, total, magnitude, pixels = PINNED[name]
    model = load_checkpoint(REPO / "book" / "checkpoints" / f"{name}.safetensors").model
    assert type(model) is (UNet if labels is None else ConditionalUNet)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps = model(x, torch.tensor([10, 700]), *([torch.tensor(labels)] if labels else []))
    assert eps.double().sum().item() == pytest.approx(total, rel=1e-5)
    assert eps.double().abs().sum().item() == pytest.approx(magnitude, rel=1e-6)
    assert eps[1, 0, 14, 10:14].tolist() == pytest.approx(pixels, abs=1e-5)


def test_build_unet_makes_chapter_3s_network_of_the_default_configuration():
    model = build_unet()
    assert type(model) is UNet and model.config == UNetConfig()
    torch.manual_seed(0)
    built = build_unet(UNetConfig()).state_dict()
    torch.manual_seed(0)
    plain = UNet().state_dict()
    assert list(built) == list(plain) and all(torch.equal(built[k], plain[k]) for k in plain)


@pytest.mark.parametrize("features", [{"num_classes": 10}, {"attention": (7,)}, {"prediction": "v"}])
def test_the_core_unet_refuses_a_later_feature_and_names_build_unet(features):
    with pytest.raises(ValueError, match="build_unet"):
        UNet(UNetConfig(**features))


def test_attention_follows_its_block_and_feeds_both_the_next_stage_and_the_skip():
    torch.manual_seed(0)
    model = build_unet(UNetConfig(channels=(8, 8, 16), time_freq_dim=8, time_embed_dim=16, attention=(7,))).eval()
    assert [type(m) for m in model.down_attention] == [torch.nn.Identity, torch.nn.Identity, SelfAttention]
    assert [type(m) for m in model.up_attention] == [SelfAttention, torch.nn.Identity, torch.nn.Identity]
    seen = {}
    model.down_attention[2].register_forward_hook(lambda m, args, out: seen.update(block=args[0], attention=out))
    model.middle.register_forward_pre_hook(lambda m, args: seen.update(middle=args[0]))
    model.up_blocks[0].register_forward_pre_hook(lambda m, args: seen.update(up=args[0]))
    with torch.no_grad():
        model(torch.randn(2, 1, 28, 28), torch.tensor([3, 300]))
    assert not torch.equal(seen["block"], seen["attention"])  # the layer's residual sum changes its input
    assert torch.equal(seen["middle"], seen["attention"])
    assert torch.equal(seen["up"][:, -16:], seen["attention"])  # the skip carries the attended features


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_a_network_that_predicts_v_or_x0_keeps_chapter_3s_weights_and_returns_eps(prediction):
    schedule = NoiseSchedule()
    torch.manual_seed(0)
    eps_net = UNet().eval()
    torch.manual_seed(0)
    other = build_unet(UNetConfig(prediction=prediction), schedule.alpha_bars).eval()
    assert list(other.state_dict()) == list(eps_net.state_dict())  # alpha_bars is not saved
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([5, 900])
    with torch.no_grad():
        out = eps_net(x, t)  # what the shared weights' last convolution predicts
        a = schedule.alpha_bars[t - 1].sqrt().view(-1, 1, 1, 1)
        s = (1 - schedule.alpha_bars[t - 1]).sqrt().view(-1, 1, 1, 1)
        expected = a * out + s * x if prediction == "v" else (x - a * out) / s
        torch.testing.assert_close(other(x, t), expected)
        torch.testing.assert_close(other(x=x, t=t), expected)
