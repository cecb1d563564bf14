import numpy as np
import pytest

from eve_vlm.data.sampler import LengthGroupedSampler, RandomSampler


def lengths(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    out = rng.integers(5, 2000, n)
    return np.where(rng.random(n) < 0.3, -out, out)  # 30 % text-only


def test_length_grouped_covers_everything_and_separates_modalities():
    ls = lengths()
    s = LengthGroupedSampler(ls, batch_size=8, seed=3)
    order = list(s)
    assert sorted(order) == list(range(len(ls)))
    batches = [order[i:i + 8] for i in range(0, len(order), 8)]
    mixed = [b for b in batches if len({bool(ls[i] > 0) for i in b}) > 1]
    assert len(mixed) <= 1 and (not mixed or mixed[0] == batches[-1])  # only the leftovers mix
    # grouping by length pads far less than a random order
    waste = lambda o: sum(max(abs(ls[o[i:i + 8]])) * 8 - sum(abs(ls[o[i:i + 8]])) for i in range(0, len(o), 8))  # noqa: E731
    assert waste(np.array(order)) < 0.3 * waste(np.random.default_rng(0).permutation(len(ls)))


def test_deterministic_per_seed_and_epoch():
    ls = lengths()
    a, b = LengthGroupedSampler(ls, 4, seed=1), LengthGroupedSampler(ls, 4, seed=1)
    assert list(a) == list(b)
    assert a.epoch == 0 and list(a) != list(LengthGroupedSampler(ls, 4, seed=1)) and a.epoch == 1  # next pass: epoch 1
    assert list(LengthGroupedSampler(ls, 4, seed=2)) != list(b.order(0))


@pytest.mark.parametrize("make", [lambda: LengthGroupedSampler(lengths(), 4, seed=5), lambda: RandomSampler(1000, seed=5)])
def test_exact_resume(make):
    full = list(make())
    s = make()
    it = iter(s)
    head = [next(it) for _ in range(333)]
    state = s.state_dict()
    assert state["position"] == 333
    resumed = make()
    resumed.load_state_dict(state)
    assert head + list(resumed) == full
    other_seed = RandomSampler(10, seed=9)
    with pytest.raises(ValueError, match="seed"):
        other_seed.load_state_dict(state)


@pytest.mark.parametrize("n", [1000, 997, 5])
def test_ranks_get_equal_shares_of_everything(n):
    ls = lengths(n)
    for make in (lambda r: LengthGroupedSampler(ls, 4, seed=0, rank=r, world_size=3),
                 lambda r: RandomSampler(n, seed=0, rank=r, world_size=3)):
        parts = [list(make(r)) for r in range(3)]
        assert len({len(p) for p in parts}) == 1
        together = [i for p in parts for i in p]
        assert set(together) == set(range(n)) and len(together) - n < 3  # padding repeats < world_size
    ranked = [LengthGroupedSampler(ls, 4, seed=0, rank=r, world_size=3).order(0) for r in range(3)]
    if n == 1000:  # megabatch k of every rank: similar total lengths
        totals = np.array([[abs(ls[o[k:k + 4]]).sum() for k in range(0, 320, 4)] for o in ranked])
        assert (totals.max(0) / totals.min(0)).mean() < 1.3
