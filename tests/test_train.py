import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

import modelseal as ms
from modelseal.errors import DataError, ModelSealError
from modelseal.runtime import seed_everything
from modelseal.train import fit


def _weights(m):
    return [p.detach().clone() for p in m.parameters()]


def test_fit_is_deterministic_on_cpu(mnist):
    small = mnist.owner.subset(300, seed=0)
    runs = []
    for _ in range(2):
        m = ms.models.build("cnn", mnist.meta, seed=0)
        ms.train.fit(m, small, epochs=1, seed=7, progress=False)
        runs.append(_weights(m))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_fit_accepts_a_plain_tensor_dataset_and_a_list_dataset(mnist):
    x, y = mnist.owner.x[:200], mnist.owner.y[:200]
    m = ms.models.build("mlp", mnist.meta, seed=0)
    h = ms.train.fit(m, TensorDataset(x, y), epochs=1, progress=False)
    assert h["task"] == "classification" and h["samples"] == 200
    h2 = ms.train.fit(m, [(x[i], y[i]) for i in range(50)], epochs=1, progress=False)
    assert h2["samples"] == 50


def test_regression_fit_and_r2():
    d = ms.data.load("diabetes")
    m = ms.models.build("mlp", d.meta, hidden=(64, 64), seed=0)
    ms.train.fit(m, d.owner, epochs=60, seed=0, progress=False)
    assert ms.train.evaluate(m, d.test) > 0.3


def test_extra_batch_hook_appends_examples(mnist):
    seen = []
    xt, yt = torch.rand(2, 1, 28, 28), torch.tensor([3, 4])

    def extra(step):
        seen.append(step)
        return xt, yt

    m = ms.models.build("mlp", mnist.meta, seed=0)
    h = ms.train.fit(m, mnist.owner.subset(128), epochs=1, batch_size=64, extra_batch=extra, progress=False)
    assert seen == [0, 1] and h["samples"] == 128 + 4


def test_extra_loss_hook_changes_training(mnist):
    small = mnist.owner.subset(128)
    a = ms.models.build("mlp", mnist.meta, seed=0)
    b = ms.models.build("mlp", mnist.meta, seed=0)
    ms.train.fit(a, small, epochs=1, progress=False)
    ms.train.fit(b, small, epochs=1, progress=False,
                 extra_loss=lambda model, x, y: 10 * sum(p.pow(2).sum() for p in model.parameters()))
    assert sum(p.norm() for p in b.parameters()) < sum(p.norm() for p in a.parameters())


def test_stop_hook_and_params_restrict(mnist):
    m = ms.models.build("cnn", mnist.meta, seed=0)
    before = _weights(m)
    last = ms.models.last_linear(m)[1]
    h = ms.train.fit(m, mnist.owner.subset(128), epochs=5, params=last.parameters(),
                     stop=lambda model, epoch: epoch >= 1, progress=False)
    assert h["epochs"] == 2
    after = _weights(m)
    changed = [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
    assert changed[-2:] == [True, True] and not any(changed[:-2])


def test_bad_inputs(mnist):
    m = ms.models.build("mlp", mnist.meta)
    with pytest.raises(ModelSealError, match="epochs"):
        ms.train.fit(m, mnist.owner, epochs=-1)
    with pytest.raises(ModelSealError, match="optimizer"):
        ms.train.fit(m, mnist.owner.subset(10), epochs=1, optimizer="lbfgs", progress=False)
    with pytest.raises(DataError):
        ms.train.fit(m, [], epochs=1)
    with pytest.raises(DataError, match="pair"):
        ms.train.fit(m, [1, 2, 3], epochs=1)
    if not torch.cuda.is_available():
        with pytest.raises(ModelSealError, match="CUDA"):
            ms.runtime.resolve_device("cuda")


def test_progress_bar_can_be_handed_in(mnist):
    import io

    from rich.console import Console
    from rich.progress import Progress

    buf = io.StringIO()
    with Progress(console=Console(file=buf, force_terminal=True)) as p:
        ms.train.fit(ms.models.build("mlp", mnist.meta), mnist.owner.subset(64), epochs=1, progress=p)
    assert "train" in buf.getvalue()


@pytest.fixture(scope="module")
def digits():
    return ms.data.load("digits", seed=0)


def _model(meta):
    return ms.models.build("mlp", meta, seed=5)


def _reference_loop(model, x, y, epochs, batch_size, seed, order=None):
    """The loop fit has always run on the CPU: Adam, one seeded permutation per epoch (or a fixed order)."""
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen) if order is None else order
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(x[idx]).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fit_keeps_the_seeded_batch_order_bit_for_bit(digits):
    """Streaming batches to the device must not change what a seed trains on the CPU."""
    a, b = _model(digits.meta), _model(digits.meta)
    fit(a, digits.owner, epochs=2, batch_size=32, seed=7, progress=False)
    _reference_loop(b, digits.owner.x, digits.owner.y, 2, 32, 7)
    assert _same(a, b)


class _PlainDataset(Dataset):
    """A user's own map-style dataset (no tensors attribute, no meta)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_any_map_style_dataset_trains_like_the_tensors(digits):
    x, y = digits.owner.x, digits.owner.y
    a, b = _model(digits.meta), _model(digits.meta)
    fit(a, _PlainDataset(x, y), epochs=1, batch_size=50, seed=1, progress=False)
    fit(b, TensorDataset(x, y), epochs=1, batch_size=50, seed=1, progress=False)
    assert _same(a, b)


def test_fit_takes_a_dataloader_with_its_own_batches(digits):
    x, y = digits.owner.x, digits.owner.y
    a, b = _model(digits.meta), _model(digits.meta)
    hist = fit(a, DataLoader(TensorDataset(x, y), batch_size=40, shuffle=False), epochs=2, seed=3,
               batch_size=999, progress=False)  # the loader's batch size wins
    assert hist["steps"] == 2 * ((len(x) + 39) // 40) and hist["samples"] == 2 * len(x)
    assert hist["task"] == "classification"
    _reference_loop(b, x, y, 2, 40, 3, order=torch.arange(len(x)))
    assert _same(a, b)


def test_fit_takes_a_shuffling_dataloader_with_the_splits_meta(digits):
    m = _model(digits.meta)
    loader = DataLoader(digits.owner, batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    fit(m, loader, epochs=3, seed=0, progress=False)
    assert ms.train.evaluate(m, digits.test) > 0.5


def test_fit_batch_size_sets_the_steps(digits):
    m = _model(digits.meta)
    n = len(digits.owner)
    assert fit(m, digits.owner, epochs=1, batch_size=100, progress=False)["steps"] == (n + 99) // 100


def test_fit_refuses_an_empty_dataloader_in_one_line():
    m = torch.nn.Linear(2, 2)
    with pytest.raises(DataError, match="empty"):
        fit(m, DataLoader(TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))), progress=False)


def test_a_dataloader_is_iterated_as_given_and_its_labels_set_the_task(digits):
    """Two loaders with the same seeded shuffling train the same weights (fit draws nothing from a loader
    before training); float labels without a declared task train a regression."""
    runs = []
    for _ in range(2):
        m = _model(digits.meta)
        fit(m, DataLoader(TensorDataset(digits.owner.x, digits.owner.y), batch_size=50, shuffle=True,
                          generator=torch.Generator().manual_seed(9)), epochs=1, seed=2, progress=False)
        runs.append(m)
    assert _same(*runs)
    x = torch.rand(64, 3)
    reg = torch.nn.Linear(3, 1)
    hist = fit(reg, DataLoader(TensorDataset(x, x.sum(1)), batch_size=16), epochs=2, progress=False)
    assert hist["task"] == "regression" and hist["loss"][-1] < hist["loss"][0]
