"""The training-recipe options: learning-rate schedule, min-SNR weights, EMA warm-up, network variants."""

from dataclasses import replace

import pytest
import torch

from ablations.candidates import CANDIDATES, REFERENCE, ROUND_TWO, recipe_of, train_command, train_flags
from ddpm_core.app.cli import build_parser
from ddpm_core.app.train_command import train_configs
from ddpm_core.diffusion.objective import min_snr_weights
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.diffusion.unet import UNet, UNetConfig, count_parameters
from ddpm_core.diffusion.unet_variants import build_unet
from ddpm_core.training.recipe import TrainConfig, learning_rate
from ddpm_core.utils.errors import DDPMError


def test_warmup_rises_linearly_to_the_peak_rate():
    config = TrainConfig(lr=1e-3, warmup_steps=200, lr_decay="constant")
    assert learning_rate(config, 0, 1000) == pytest.approx(1e-3 / 200)
    assert learning_rate(config, 99, 1000) == pytest.approx(1e-3 * 100 / 200)
    assert learning_rate(config, 199, 1000) == pytest.approx(1e-3)
    assert learning_rate(config, 900, 1000) == pytest.approx(1e-3)  # constant after the warm-up


def test_cosine_decay_halves_at_midpoint_and_ends_at_zero():
    config = TrainConfig(lr=1e-3, warmup_steps=100, lr_decay="cosine")
    assert learning_rate(config, 100, 1100) == pytest.approx(1e-3)
    assert learning_rate(config, 600, 1100) == pytest.approx(0.5e-3)
    assert learning_rate(config, 1100, 1100) == pytest.approx(0.0, abs=1e-12)
    rates = [learning_rate(config, s, 1100) for s in range(100, 1101)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))


def test_min_snr_weights_are_one_where_snr_is_below_gamma_and_gamma_over_snr_above():
    schedule = NoiseSchedule()
    t = torch.arange(1, 1001)
    weights = min_snr_weights(schedule, t, gamma=5.0)
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    snr = alpha_bar / (1 - alpha_bar)
    expected = torch.where(snr > 5.0, 5.0 / snr, torch.ones_like(snr)).float()
    torch.testing.assert_close(weights, expected, rtol=1e-4, atol=1e-6)
    assert weights[0] < 0.01 and weights[-1] == 1.0  # t=1 is nearly clean: its SNR is about 10,000


def test_ema_warmup_forgets_the_initial_weights(tmp_path):
    from ddpm_core.training.loop import train

    images = torch.rand(64, 1, 28, 28) * 2 - 1
    tiny = UNetConfig(channels=(8, 8, 8), time_freq_dim=8, time_embed_dim=16, num_groups=4)
    common = dict(epochs=1, batch_size=16, lr=1e-3, ema_decay=0.999)
    torch.manual_seed(0)  # train() builds its network after the same seeding
    initial = UNet(tiny).state_dict()
    distances = {}
    for warmup in (False, True):
        out = tmp_path / str(warmup)
        train(out, TrainConfig(**common, ema_warmup=warmup), tiny, images=images, device="cpu", progress=False)
        from ddpm_core.training.checkpoint import load_checkpoint

        ema = load_checkpoint(out / "model.safetensors", use_ema=True).model.state_dict()
        distances[warmup] = sum((ema[k] - initial[k]).norm().item() for k in initial if k.endswith("weight"))
    # Without warm-up, 4 updates at decay 0.999 leave the EMA at 99.6% initial weights; with it, far from them.
    assert distances[True] > 20 * distances[False]


@pytest.mark.parametrize("name", list(CANDIDATES))
def test_every_candidate_has_the_reference_parameter_count(name):
    recipe = CANDIDATES[name]["recipe"]
    config = UNetConfig(channels=tuple(recipe["channels"]), time_embed_dim=recipe["time_embed_dim"],
                        attention=tuple(recipe["attention"]), downsample=recipe["downsample"],
                        zero_init=recipe["zero_init"])
    assert count_parameters(build_unet(config)) == 324_705


@pytest.mark.parametrize("name", list(ROUND_TWO))
def test_round_two_candidates_stay_within_the_reference_parameter_count(name):
    recipe = ROUND_TWO[name]["recipe"]
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items()
              if k in UNetConfig.__dataclass_fields__}
    config = UNetConfig(**fields)
    assert count_parameters(build_unet(config, NoiseSchedule().alpha_bars)) <= 324_705
    parsed = _recipe_of_arguments(["train", *train_flags(recipe)])
    assert parsed == {k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items()}


def _constant_output_network(prediction, value):
    model = build_unet(UNetConfig(prediction=prediction), NoiseSchedule().alpha_bars).eval()
    torch.nn.init.zeros_(model.conv_out.weight)
    torch.nn.init.constant_(model.conv_out.bias, value)  # the last convolution now outputs `value` everywhere
    return model


def test_a_network_predicting_v_or_x0_returns_the_eps_its_prediction_implies():
    alpha_bars = NoiseSchedule().alpha_bars.float()
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([1, 500, 1000])
    a = alpha_bars[t - 1].sqrt().view(-1, 1, 1, 1)
    s = (1 - alpha_bars[t - 1]).sqrt().view(-1, 1, 1, 1)
    with torch.no_grad():
        # v = a eps - s x_0 and x_t = a x_0 + s eps give eps = a v + s x_t; x_0 gives eps = (x_t - a x_0) / s.
        assert torch.allclose(_constant_output_network("v", 0.3)(x, t), a * 0.3 + s * x, atol=1e-5)
        assert torch.allclose(_constant_output_network("x0", 0.3)(x, t), (x - a * 0.3) / s, atol=1e-4)
    with pytest.raises(ValueError, match="alpha_bars"):
        build_unet(UNetConfig(prediction="v"))


def test_with_min_snr_weights_the_v_loss_and_the_eps_loss_are_the_same_loss():
    # Hang et al. 2023: min(SNR, gamma) / (SNR + 1) on the v error equals min(SNR, gamma) / SNR on the eps error.
    schedule = NoiseSchedule()
    t = torch.arange(1, 1001)
    alpha_bar = schedule.alpha_bars.float()[t - 1].view(-1, 1)
    snr = alpha_bar / (1 - alpha_bar)
    x0, eps, v_pred = torch.randn(1000, 4), torch.randn(1000, 4), torch.randn(1000, 4)
    xt = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    v = alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0
    eps_pred = alpha_bar.sqrt() * v_pred + (1 - alpha_bar).sqrt() * xt
    v_loss = snr.clamp(max=5) / (snr + 1) * (v - v_pred).square()
    eps_loss = min_snr_weights(schedule, t, 5.0).view(-1, 1) * (eps - eps_pred).square()
    assert torch.allclose(v_loss, eps_loss, rtol=1e-3, atol=1e-6)


def test_dropout_is_active_in_training_and_off_in_evaluation():
    torch.manual_seed(0)
    model = UNet(UNetConfig(dropout=0.5))
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([5, 500])
    model.train()
    assert not torch.equal(model(x, t), model(x, t))
    model.eval()
    assert torch.equal(model(x, t), model(x, t))
    default = UNet().train()
    rng = torch.get_rng_state()
    assert torch.equal(default(x, t), default(x, t))
    assert torch.equal(torch.get_rng_state(), rng)  # the default network draws no random numbers while training


def test_a_v_predicting_checkpoint_samples_and_exports_as_eps(tmp_path):
    from ddpm_core.training.checkpoint import load_checkpoint, save_weights

    tiny = UNetConfig(channels=(8, 8, 16), time_freq_dim=8, time_embed_dim=16, prediction="v")
    model = build_unet(tiny, NoiseSchedule().alpha_bars).eval()
    save_weights(tmp_path / "v.safetensors", model, {"epoch": 1})
    loaded = load_checkpoint(tmp_path / "v.safetensors").model
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 900])
    with torch.no_grad():
        assert torch.allclose(loaded(x, t), model(x, t), atol=1e-5)


def test_attention_and_strided_downsampling_change_the_network():
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1, 500])
    plain = UNet(UNetConfig())
    with_attention = build_unet(UNetConfig(attention=(7,)))
    strided = UNet(UNetConfig(downsample="conv"))
    # One attention layer after each 7x7 block, down and up: GroupNorm, qkv and output projections.
    assert count_parameters(with_attention) - count_parameters(plain) == 2 * (4 * 48 * 48 + 4 * 48 + 2 * 48)
    assert count_parameters(strided) - count_parameters(plain) == 2 * (32 * 32 * 9 + 32)
    for model in (with_attention, strided):
        assert model(x, t).shape == (2, 1, 28, 28)


def test_zero_init_makes_the_untrained_network_predict_zero_noise():
    model = UNet(UNetConfig(zero_init=True))
    eps = model(torch.randn(3, 1, 28, 28), torch.tensor([1, 10, 1000]))
    assert torch.count_nonzero(eps) == 0
    assert torch.count_nonzero(model.down_blocks[0].conv2.weight) == 0
    assert torch.count_nonzero(model.down_blocks[0].conv1.weight) > 0  # only the last convolution is zeroed


def test_an_old_configuration_without_the_new_fields_loads_as_the_network_it_was():
    from ddpm_core.training.legacy import LEGACY_DEFAULTS, with_legacy_defaults

    old = {"image_channels": 1, "channels": [32, 32, 48], "time_freq_dim": 16, "time_embed_dim": 64, "num_groups": 8}
    config = UNetConfig.from_dict(with_legacy_defaults(old))
    assert config.attention == () and config.downsample == "maxpool" and not config.zero_init
    assert config == UNetConfig() and set(LEGACY_DEFAULTS) == set(UNetConfig.__dataclass_fields__) - set(old)
    assert with_legacy_defaults({**old, "dropout": 0.1})["dropout"] == 0.1  # a stored field is kept


def test_bad_architecture_options_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="attention at 5x5"):
        UNetConfig(attention=(5,)).validate()
    with pytest.raises(ValueError, match="downsample"):
        UNetConfig(downsample="avgpool").validate()
    with pytest.raises(DDPMError, match="lr_decay"):
        replace(TrainConfig(), lr_decay="linear").validate()
    with pytest.raises(DDPMError, match="grad_clip"):
        replace(TrainConfig(), grad_clip=0.0).validate()


@pytest.mark.parametrize("name", list(CANDIDATES))
def test_a_recipe_command_sets_every_setting_of_the_recipe(name):
    recipe = CANDIDATES[name]["recipe"]
    parsed = _recipe_of_arguments(["train", *train_flags(recipe)])
    assert parsed == {k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items()}
    assert train_command(recipe, 2, "runs/x").startswith("python -m ddpm_core train --epochs 2 --out runs/x")


def test_the_recipe_read_back_from_a_checkpoint_is_the_recipe_that_ran():
    recipe = CANDIDATES["tuned_minsnr"]["recipe"]
    train_config = {k: v for k, v in recipe.items() if k in TrainConfig.__dataclass_fields__}
    model_config = UNetConfig(channels=recipe["channels"]).to_dict()
    assert recipe_of(train_config, model_config) == recipe
    legacy = recipe_of({"lr": 2e-4, "ema_decay": 0.999}, {"channels": (32, 32, 48)})  # a file with fewer settings
    assert legacy == REFERENCE


def _recipe_of_arguments(argv):
    from dataclasses import asdict

    config, model_config = train_configs(build_parser().parse_args(argv))
    return recipe_of(asdict(config), model_config.to_dict())


def _recipe_of_checkpoint(path):
    from ddpm_core.training.checkpoint import read_metadata

    metadata = read_metadata(path)
    return recipe_of(metadata["train_config"], UNetConfig.from_dict(metadata["model_config"]).to_dict())


def test_the_package_defaults_are_the_best_screened_recipe_and_the_book_model_used_them():
    import json
    from dataclasses import asdict
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    screen = json.loads((repo / "ablations" / "screen_2ep.json").read_text())
    best = min(screen, key=lambda name: screen[name]["raw"]["frechet_distance"])
    defaults = recipe_of(asdict(TrainConfig()), UNetConfig().to_dict())
    assert defaults == CANDIDATES[best]["recipe"]
    assert _recipe_of_checkpoint(repo / "book" / "checkpoints" / "ddpm_mnist.safetensors") == defaults
    assert _recipe_of_checkpoint(repo / "book" / "checkpoints" / "reference_recipe.safetensors") == REFERENCE


def test_the_documented_reference_commands_train_the_reference_recipe():
    import re
    import shlex
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    target = re.search(r"^train-reference:.*?\n\t(.*?)\n\n", (repo / "Makefile").read_text(), re.S | re.M)
    make_flags = shlex.split(target.group(1).replace("\\\n", " "))[3:]  # after "$(BIN)/python -m ddpm_core"
    for flags in (make_flags, ["train", "--recipe", "reference"]):
        assert _recipe_of_arguments(flags) == REFERENCE, flags
    # a flag given beside --recipe changes that one setting
    assert _recipe_of_arguments(["train", "--recipe", "reference", "--lr", "1e-3"]) == {**REFERENCE, "lr": 1e-3}


def test_every_round_two_result_states_the_command_that_trains_its_candidate_within_the_budget():
    import json
    import shlex
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    for file, epochs in (("screen_round2.json", 2), ("full_round2.json", 15)):
        results = json.loads((repo / "ablations" / file).read_text())
        assert results, file
        for name, entry in results.items():
            assert entry["epochs"] == epochs and entry["parameters"] <= 324_705, (file, name)
            if name == "book":  # the committed model, scored on a second seed set
                from ddpm_core.training.checkpoint import read_metadata

                model = read_metadata(repo / "book" / "checkpoints" / "ddpm_mnist.safetensors")
                assert entry["command"] == "make train" and entry["loss_history"] == model["loss_history"]
                continue
            argv = shlex.split(entry["command"])[3:]  # after "python -m ddpm_core"
            assert argv[argv.index("--out") + 1] == f"runs/{'screen2' if epochs == 2 else 'full2'}/{name}"
            candidate, _, seed = name.partition("_seed")  # zero_seed1: zero, trained with seed 1
            assert argv[argv.index("--seed") + 1] == (seed or "0"), (file, name)
            assert _recipe_of_arguments(argv) == ROUND_TWO[candidate]["recipe"], (file, name)


def test_the_books_recipe_keeps_the_reference_runs_schedule():
    """T = 1000 and betas from 1e-4 to 0.02: the budget every recipe shares. With T = 50 and the same betas,
    alpha_bar_T would be 0.60, not 4e-5, and sampling from pure noise would fail (the bug short-schedule of
    ddpm_core.book.bugs)."""
    schedule = TrainConfig().schedule()
    assert schedule.num_steps == 1000
    assert torch.allclose(schedule.betas, torch.linspace(1e-4, 0.02, 1000, dtype=schedule.betas.dtype))
    assert schedule.alpha_bars[-1] < 1e-4  # x_T is noise: the sampler's N(0, I) start is right


def test_every_architecture_flag_sets_a_field_of_the_config_and_reads_it_one_way():
    from ddpm_core.app.unet_options import UNET_OPTIONS
    from ddpm_core.utils import arguments

    fields = UNetConfig.__dataclass_fields__
    flags = {action.dest for action in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    for name, option in UNET_OPTIONS.items():
        assert name in fields and name in flags and option["help"]
        is_bool = fields[name].type in ("bool", bool)
        assert ["parse" in option, "choices" in option, is_bool].count(True) == 1, name
        assert "parse" not in option or callable(getattr(arguments, option["parse"]))
    assert not {"image_channels", "time_freq_dim", "num_classes"} & set(UNET_OPTIONS)  # no flag of their own
