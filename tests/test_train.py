import pytest
import torch
from torch.utils.data import TensorDataset

import modelseal as ms
from modelseal.errors import DataError, ModelSealError


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
