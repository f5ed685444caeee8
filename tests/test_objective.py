"""What Algorithm 1 draws around a step: the label drops of a conditional network and the noise shards of
data-parallel training, each checked against draws made by hand from the same generators."""

import pytest
import torch

from ddpm_core.diffusion.objective import LabelDropout, noise_shards, train_step
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.utils.errors import DDPMError


class Recorder(torch.nn.Module):
    """eps_theta(x_t, t, y) = 0 * w, with one weight, that keeps what it was called with."""

    null_label = 10

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[tuple] = []

    def forward(self, x, t, labels=None):
        self.calls.append((x.detach().clone(), t.clone(), labels))
        return self.weight * x


def test_label_dropout_draws_the_drops_after_t_and_eps_from_the_same_generator():
    schedule = NoiseSchedule(num_steps=50, beta_start=1e-3, beta_end=0.2)
    network, x0 = Recorder(), torch.rand(6, 1, 4, 4) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    generator = torch.Generator().manual_seed(7)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    train_step(LabelDropout(network, labels, 0.5, generator), schedule, optimizer, x0, generator)
    by_hand = torch.Generator().manual_seed(7)
    t = torch.randint(1, 51, (6,), generator=by_hand)
    eps = torch.randn(x0.shape, generator=by_hand)
    drop = torch.rand(6, generator=by_hand) < 0.5
    (x_t, seen_t, seen_labels), = network.calls
    assert torch.equal(seen_t, t)
    torch.testing.assert_close(x_t, schedule.q_sample(x0, t, eps))
    assert torch.equal(seen_labels, torch.where(drop, torch.full_like(labels, 10), labels))
    assert 0 < int(drop.sum()) < 6  # this seed drops some labels and keeps others
    assert torch.equal(generator.get_state(), by_hand.get_state())  # nothing else was drawn


@pytest.mark.parametrize(("shards", "batch"), [(2, 8), (3, 7), (4, 2)])
def test_noise_shards_draw_each_shards_rows_from_its_own_generator(shards, batch):
    with noise_shards([torch.Generator().manual_seed(100 + j) for j in range(shards)]) as generator:
        t = torch.randint(1, 1001, (batch,), generator=generator)
        eps = torch.randn((batch, 1, 3, 3), generator=generator)
        drops = torch.rand((batch,), generator=generator)
        untouched = torch.arange(3) * 2  # every other call passes through
    assert torch.equal(untouched, torch.tensor([0, 2, 4]))
    rows = torch.arange(batch).tensor_split(shards)  # the shard's images, as the process splits its batch
    for j, part in enumerate(rows):
        own = torch.Generator().manual_seed(100 + j)  # shard j draws t, then eps, then the drops
        assert torch.equal(t[part], torch.randint(1, 1001, (len(part),), generator=own))
        assert torch.equal(eps[part], torch.randn((len(part), 1, 3, 3), generator=own))
        assert torch.equal(drops[part], torch.rand((len(part),), generator=own))


def test_one_noise_shard_is_its_own_generator_and_a_draw_of_another_form_is_refused():
    alone = torch.Generator().manual_seed(1)
    with noise_shards([alone]) as generator:
        assert generator is alone
    with noise_shards([torch.Generator(), torch.Generator()]) as generator, pytest.raises(DDPMError, match="tuple"):
        torch.randn(2, 3, generator=generator)
