"""Class conditioning and classifier-free guidance: the embedding, the label dropout, the guided
epsilon, the samplers' refusals, checkpoints and the command line."""

import dataclasses

import numpy as np
import pytest
import torch

from ddpm_core import UNet, UNetConfig
from ddpm_core.app.cli import main
from ddpm_core.diffusion.conditioning import guided_eps
from ddpm_core.diffusion.ddim import ddim_sample
from ddpm_core.diffusion.objective import drop_labels
from ddpm_core.diffusion.sampling import sample
from ddpm_core.diffusion.unet import count_parameters
from ddpm_core.diffusion.unet_variants import ConditionalUNet, build_unet
from ddpm_core.training.checkpoint import load_checkpoint, read_metadata
from ddpm_core.training.loop import train
from ddpm_core.training.recipe import TrainConfig
from ddpm_core.utils.errors import DDPMError
from tests.helpers import TINY_CONFIG, needs_mnist, tiny_schedule

TINY_CONDITIONAL = dataclasses.replace(TINY_CONFIG, num_classes=10)
QUICK = TrainConfig(epochs=1, batch_size=16, num_steps=20, beta_start=1e-3, beta_end=0.2, lr_decay="constant")


def conditional_model(seed: int = 0) -> ConditionalUNet:
    torch.manual_seed(seed)
    return build_unet(TINY_CONDITIONAL).eval()


def test_the_class_embedding_adds_one_row_per_class_plus_no_class():
    unconditional, conditional = UNet(), build_unet(UNetConfig(num_classes=10))
    assert count_parameters(unconditional) == 324_705  # the book's network is unchanged
    # 10 digits + "no class" = 11 rows of time_embed_dim = 64 weights each
    assert count_parameters(conditional) - count_parameters(unconditional) == 11 * 64
    assert isinstance(conditional, ConditionalUNet) and conditional.config == UNetConfig(num_classes=10)
    assert conditional.class_embed.weight.shape == (11, 64) and conditional.null_label == 10
    assert not hasattr(unconditional, "class_embed") and not hasattr(unconditional, "null_label")


def test_a_conditional_network_starts_from_the_unconditional_weights():
    torch.manual_seed(3)
    plain = UNet(TINY_CONFIG).state_dict()
    torch.manual_seed(3)
    conditional = build_unet(TINY_CONDITIONAL).state_dict()
    assert all(torch.equal(plain[k], conditional[k]) for k in plain)


def test_labels_change_the_prediction_and_an_unconditional_net_refuses_them():
    model = conditional_model()
    x, t = torch.randn(4, 1, 28, 28), torch.full((4,), 7)
    with torch.no_grad():
        nn_init = model.class_embed.weight.clone()
        model.class_embed.weight.copy_(torch.randn_like(nn_init))
        three, five = model(x, t, torch.full((4,), 3)), model(x, t, torch.full((4,), 5))
    assert (three - five).abs().max() > 1e-3
    with pytest.raises(TypeError):  # eps_theta(x_t, t) takes no label
        UNet(TINY_CONFIG)(x, t, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        build_unet(dataclasses.replace(TINY_CONFIG, num_classes=0))
    with pytest.raises(ValueError, match=r"has no num_classes: .*build_unet\(config\)"):
        UNet(TINY_CONDITIONAL)  # chapter 3's network has no label embedding


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_labels_are_dropped_to_no_class_at_the_rate_p_uncond(p):
    labels = torch.randint(0, 10, (200_000,), generator=torch.Generator().manual_seed(0))
    dropped = drop_labels(labels, 10, p, torch.Generator().manual_seed(1))
    rate = (dropped == 10).float().mean().item()
    assert abs(rate - p) < 0.004  # 200,000 draws: the standard error is at most 0.0011
    kept = dropped != 10
    assert torch.equal(dropped[kept], labels[kept])  # the others keep their label


def test_guidance_zero_is_exactly_the_unconditional_prediction():
    model = conditional_model()
    x, t, labels = torch.randn(3, 1, 28, 28), torch.tensor([5, 10, 20]), torch.tensor([1, 4, 9])
    with torch.no_grad():
        assert torch.equal(guided_eps(model, x, t, labels, 0.0), model(x, t))
        assert torch.equal(guided_eps(model, x, t, labels, 1.0), model(x, t, labels))


class ToyConditional(torch.nn.Module):
    """eps(x, t, y) = x * (y + 1): the conditional and unconditional predictions are known exactly."""

    null_label = 10

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x, t, labels=None):
        self.calls += 1
        labels = torch.full_like(t, self.null_label) if labels is None else labels
        return x * (labels.float() + 1)[:, None, None, None]


@pytest.mark.parametrize("w", [0.5, 2.0, 3.0, 8.0])
def test_the_guided_epsilon_is_uncond_plus_w_times_the_difference_from_one_call(w):
    model = ToyConditional()
    x, t, labels = torch.randn(4, 1, 2, 2), torch.ones(4, dtype=torch.long), torch.tensor([0, 3, 7, 9])
    eps = guided_eps(model, x, t, labels, w)
    cond, uncond = x * (labels.float() + 1)[:, None, None, None], x * 11
    torch.testing.assert_close(eps, uncond + w * (cond - uncond))
    assert model.calls == 1  # both predictions from one batched call


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_refuse_what_the_model_cannot_do(sampler):
    schedule = tiny_schedule()

    def run(model, **options):
        if sampler == "ddpm":
            return sample(model, schedule, num_samples=2, progress=False, **options)
        return ddim_sample(model, schedule, num_samples=2, steps=5, progress=False, **options)

    conditional, plain = conditional_model(), UNet(TINY_CONFIG).eval()
    with pytest.raises(DDPMError, match="conditional.*labels"):
        run(conditional)
    with pytest.raises(DDPMError, match="unconditional"):
        run(plain, labels=3)
    with pytest.raises(DDPMError, match="unconditional model .* so guidance= cannot apply"):
        run(plain, guidance=2.0)
    with pytest.raises(DDPMError, match="label 10 is not a class"):
        run(conditional, labels=[3, 10])
    with pytest.raises(DDPMError, match="3 labels for 2 samples"):
        run(conditional, labels=[1, 2, 3])
    with pytest.raises(DDPMError, match="guidance must be a finite number"):
        run(conditional, labels=1, guidance=-1.0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_a_guided_sample_depends_only_on_its_seed_and_label(sampler):
    schedule, model = tiny_schedule(), conditional_model()

    def run(seeds, labels, batch_size):
        if sampler == "ddpm":
            return sample(model, schedule, seeds=seeds, labels=labels, guidance=3.0, batch_size=batch_size,
                          progress=False)[0]
        return ddim_sample(model, schedule, seeds=seeds, labels=labels, guidance=3.0, steps=5, eta=0.5,
                           batch_size=batch_size, progress=False)[0]

    together = run([4, 5, 6], [1, 2, 3], batch_size=3)
    alone = run([5], [2], batch_size=1)
    torch.testing.assert_close(together[1:2], alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(run([5], [7], batch_size=1), alone)  # another digit from the same noise


def test_guidance_zero_samples_the_unconditional_model_of_the_same_network():
    schedule, model = tiny_schedule(), conditional_model()
    with torch.no_grad():
        model.class_embed.weight.copy_(torch.randn_like(model.class_embed.weight))
    guided, _ = ddim_sample(model, schedule, num_samples=2, steps=5, labels=[3, 8], guidance=0.0, progress=False)
    plain, _ = ddim_sample(lambda x, t: model(x, t), schedule, num_samples=2, steps=5, progress=False)
    assert torch.equal(guided, plain)


def test_training_needs_labels_in_range_and_checkpoints_record_the_classes(tmp_path):
    images = torch.rand(32, 1, 28, 28) * 2 - 1
    with pytest.raises(DDPMError, match="pass labels="):
        train(tmp_path / "a", QUICK, TINY_CONDITIONAL, images=images, progress=False)
    with pytest.raises(DDPMError, match=r"labels must lie in 0..9"):
        train(tmp_path / "b", QUICK, TINY_CONDITIONAL, images=images, labels=torch.full((32,), 10), progress=False)
    labels = torch.arange(32) % 10
    train(tmp_path / "c", QUICK, TINY_CONDITIONAL, images=images, labels=labels, progress=False)
    assert read_metadata(tmp_path / "c")["model_config"]["num_classes"] == 10
    loaded = load_checkpoint(tmp_path / "c")
    assert loaded.model.config.num_classes == 10
    images_out, _ = ddim_sample(loaded.model, loaded.schedule, num_samples=2, steps=3, labels=4, guidance=2.0,
                                progress=False)
    assert torch.isfinite(images_out).all()


def test_a_conditional_run_resumes_to_the_same_weights(tmp_path):
    images, labels = torch.rand(48, 1, 28, 28) * 2 - 1, torch.arange(48) % 10
    config = dataclasses.replace(QUICK, epochs=2, ema_decay=None)
    train(tmp_path / "straight", config, TINY_CONDITIONAL, images=images, labels=labels, progress=False)
    train(tmp_path / "split", dataclasses.replace(config, epochs=1), TINY_CONDITIONAL, images=images, labels=labels,
          progress=False)
    train(tmp_path / "split", config, TINY_CONDITIONAL, images=images, labels=labels, resume=True, progress=False)
    a, b = load_checkpoint(tmp_path / "straight").model, load_checkpoint(tmp_path / "split").model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond") / "run"
    images, labels = torch.rand(32, 1, 28, 28) * 2 - 1, torch.arange(32) % 10
    train(out, QUICK, TINY_CONDITIONAL, images=images, labels=labels, progress=False)
    return out


def test_sample_asks_for_a_digit_from_the_command_line(conditional_run, tmp_path):
    out = tmp_path / "sevens.npy"
    assert main(["sample", "--checkpoint", str(conditional_run), "--label", "7", "--guidance", "3",
                 "--num-samples", "3", "--sampler", "ddim", "--steps", "4", "--out", str(out), "--no-progress"]) == 0
    assert np.load(out).shape == (3, 28, 28)
    mixed = tmp_path / "mixed.npy"
    assert main(["sample", "--checkpoint", str(conditional_run), "--labels", "0,1,2", "--sampler", "ddim",
                 "--steps", "4", "--out", str(mixed), "--no-progress"]) == 0
    assert np.load(mixed).shape == (3, 28, 28)  # one sample per label when --num-samples is not given


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "is a conditional model (10 classes), asked for no digit: say which digit"),
        (["--label", "10"], "knows the classes 0..9"),
        (["--labels", "1,12"], "knows the classes 0..9"),
        (["--label", "1", "--guidance", "-2"], "expected a guidance weight w from 0 to 20"),
        (["--label", "1", "--labels", "1,2"], "not allowed with argument"),
    ],
)
def test_bad_conditioning_on_the_command_line_exits_with_status_2(conditional_run, tmp_path, extra, message,
                                                                 capsys):
    out = tmp_path / "x.png"
    argv = ["sample", "--checkpoint", str(conditional_run), "--out", str(out), "--sampler", "ddim", "--steps", "2",
            "--no-progress", *extra]
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_labels_for_an_unconditional_checkpoint_exit_with_status_2(tmp_path, capsys):
    run = tmp_path / "plain"
    train(run, QUICK, TINY_CONFIG, images=torch.rand(16, 1, 28, 28) * 2 - 1, progress=False)
    for extra in (["--label", "3"], ["--guidance", "2"]):
        assert main(["sample", "--checkpoint", str(run), "--out", str(tmp_path / "x.png"), "--no-progress",
                     *extra]) == 2
        assert "is an unconditional model" in capsys.readouterr().err


def test_p_uncond_needs_conditional(capsys):
    assert main(["train", "--p-uncond", "0.2", "--out", "unused"]) == 2
    assert "--p-uncond applies only to a conditional network" in capsys.readouterr().err


@pytest.mark.slow
@needs_mnist
def test_conditional_scores_read_real_digits_as_asked_and_as_varied_as_real(mnist_test, classifier):
    from ddpm_core.measure.metrics import conditional_scores

    images, labels = mnist_test
    keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    samples, requested = images[keep[:300]], labels[keep[:300]]
    real, real_labels = images[keep[300:]], labels[keep[300:]]
    judge = classifier
    honest = conditional_scores(samples, requested, real, real_labels, judge)
    assert honest["accuracy"] > 0.97 and honest["confident_fraction"] > 0.9
    assert 0.8 < honest["diversity_mean"] < 1.25  # real digits are as varied as real digits
    assert set(honest["class_frechet"]) == set(range(10))
    wrong = conditional_scores(samples, (requested + 1) % 10, real, real_labels, judge)
    assert wrong["accuracy"] < 0.05  # every digit asked to be the next one
    copies = conditional_scores(samples[requested == 3][:1].repeat(20, 1, 1, 1), torch.full((20,), 3), real,
                                real_labels, judge)
    assert copies["diversity_mean"] < 0.01  # twenty copies of one image have no variety


def test_the_value_slider_embeds_one_frame_per_setting():
    from ddpm_core.book.slider import StaticValueSlider

    frames = torch.rand(3, 4, 1, 28, 28) * 2 - 1
    slider = StaticValueSlider(frames, [0, 1.5, 8], symbol="w", caption="a <b>", element_id="s1")
    assert slider.labels == ["0", "1.5", "8"]
    assert slider.html.count('id="s1-range"') == 1 and 'max="2"' in slider.html
    assert "w = 0" in slider.html and "a &lt;b&gt;" in slider.html  # the caption is escaped
    with pytest.raises(DDPMError, match="K = len"):
        StaticValueSlider(frames, [0, 1])


def test_the_committed_conditional_model_is_the_book_recipe_with_labels():
    from dataclasses import asdict

    from tests.helpers import REPO

    metadata = read_metadata(REPO / "book" / "checkpoints" / "ddpm_mnist_conditional.safetensors")
    assert UNetConfig.from_dict(metadata["model_config"]) == UNetConfig(num_classes=10)
    recorded, book = metadata["train_config"], asdict(TrainConfig())
    assert recorded == {k: book[k] for k in recorded}  # the default recipe, p_uncond 0.1, 15 epochs
    assert set(book) - set(recorded) == {"precision"}  # its file names no precision: it trained in fp32
    assert metadata["epoch"] == 15 and len(metadata["loss_history"]) == 15


@pytest.mark.slow
@needs_mnist
def test_evaluate_asks_a_conditional_model_for_every_digit(conditional_run, capsys):
    assert main(["evaluate", "--checkpoint", str(conditional_run), "--num-samples", "20", "--sampler", "ddim",
                 "--steps", "2", "--guidance", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "w=2" in out and "judged as asked" in out
    assert main(["evaluate", "--checkpoint", str(conditional_run), "--num-samples", "10", "--no-progress"]) == 2
    assert "at least 2 samples of each of its 10 classes" in capsys.readouterr().err


def test_evaluate_refuses_guidance_for_an_unconditional_checkpoint(tmp_path, capsys):
    run = tmp_path / "plain"
    train(run, QUICK, TINY_CONFIG, images=torch.rand(16, 1, 28, 28) * 2 - 1, progress=False)
    assert main(["evaluate", "--checkpoint", str(run), "--guidance", "3", "--no-progress"]) == 2
    assert "unconditional model (trained without labels), so --guidance cannot apply" in capsys.readouterr().err
