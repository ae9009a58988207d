import pytest
import torch

import modelseal as ms
from modelseal.errors import SuspectError, WhiteBoxRequired
from modelseal.suspect import QueryBudgetExceeded


def test_module_suspect_counts_queries_and_batches(owner_cnn, mnist):
    s = ms.Suspect(owner_cnn, batch_size=7)
    out = s.predict(mnist.test.x[:20])
    assert out.shape == (20, 10) and s.queries == 20 and s.white_box
    assert torch.equal(s.labels(mnist.test.x[:5]), out[:5].argmax(1))
    assert s.queries == 25


def test_budget_is_enforced_before_querying(owner_cnn, mnist):
    s = ms.Suspect(owner_cnn, max_queries=10)
    s.predict(mnist.test.x[:8])
    with pytest.raises(QueryBudgetExceeded, match="budget of 10"):
        s.predict(mnist.test.x[:3])
    assert s.queries == 8 and s.remaining() == 2


def test_wrong_shape_and_nan_are_refused(owner_cnn):
    s = ms.Suspect(owner_cnn)
    with pytest.raises(SuspectError, match="shape"):
        s.predict(torch.zeros(2, 3, 32, 32))
    nan = ms.Suspect(lambda x: torch.full((len(x), 10), float("nan")), input_shape=(1, 28, 28))
    with pytest.raises(SuspectError, match="NaN"):
        nan.predict(torch.zeros(2, 1, 28, 28))
    short = ms.Suspect(lambda x: torch.zeros(1, 10))
    with pytest.raises(SuspectError, match="malformed"):
        short.predict(torch.zeros(4, 1, 28, 28))


def test_black_box_suspects(tmp_path, owner_cnn):
    ms.models.export_onnx(owner_cnn, tmp_path / "m.onnx")
    s = ms.Suspect.load(tmp_path / "m.onnx")
    assert s.module is None and s.input_shape == (1, 28, 28)
    with pytest.raises(WhiteBoxRequired, match="white-box"):
        s.require_module("deepmarks")


def test_files_are_validated(tmp_path, owner_cnn):
    with pytest.raises(SuspectError, match="does not exist"):
        ms.Suspect.load(tmp_path / "none.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(SuspectError, match="not a valid ONNX"):
        ms.Suspect.load(tmp_path / "bad.onnx")
    (tmp_path / "bad.safetensors").write_bytes(b"12345678")
    with pytest.raises(SuspectError):
        ms.Suspect.load(tmp_path / "bad.safetensors")
    ms.models.save_model(owner_cnn, tmp_path / "m.safetensors")
    s = ms.Suspect.load(tmp_path / "m.safetensors")
    assert s.white_box and s.output_size() == 10


def test_suspect_takes_label_only_dict_outputs_and_float64_models():
    """Issue 40: `Suspect(module, label_only=...)`, models returning a dict / ModelOutput / tuple, and a float64
    model all work; a model returning something else is one clear SuspectError."""
    import modelseal as ms
    from modelseal.errors import SuspectError

    d = ms.data.load("digits", seed=0)
    m = ms.models.build("mlp", d.meta, seed=0)
    x = d.test.x[:4]
    scores = ms.Suspect(m).predict(x)
    assert ms.Suspect(m, label_only=False).predict(x).shape == scores.shape
    labels = ms.Suspect(m, label_only=True)
    assert labels.label_only and torch.equal(labels.predict(x), scores.argmax(1))

    class Wrapped(torch.nn.Module):
        def __init__(self, kind: str) -> None:
            super().__init__()
            self.m, self.kind = m, kind

        def forward(self, x):
            y = self.m(x)
            return {"logits": y, "hidden": x} if self.kind == "dict" else (y, x) if self.kind == "tuple" else "no"

    for kind in ("dict", "tuple"):
        assert torch.allclose(ms.Suspect(Wrapped(kind), input_shape=(1, 8, 8)).predict(x), scores)
    with pytest.raises(SuspectError, match="not a tensor"):
        ms.Suspect(Wrapped("str"), input_shape=(1, 8, 8)).predict(x)
    import copy

    double = copy.deepcopy(m).double()
    assert torch.allclose(ms.Suspect(double).predict(x), scores, atol=1e-5)
    with pytest.raises(SuspectError, match="label_only"):
        ms.Suspect(m, label_only="yes")


def test_export_onnx_refuses_a_graph_with_a_fixed_batch(tmp_path):
    import modelseal as ms
    from modelseal.errors import ModelError

    class FixedBatch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.reshape(2, 64))  # traced at batch 2: fixed

    with pytest.raises(ModelError, match="another batch size|differently"):
        ms.models.export_onnx(FixedBatch(), tmp_path / "f.onnx", input_shape=(1, 8, 8))
    assert not (tmp_path / "f.onnx").exists() and not list(tmp_path.glob(".*tmp*"))
    d = ms.data.load("digits", seed=0)
    ms.models.export_onnx(ms.models.build("mlp", d.meta, seed=0), tmp_path / "ok.onnx")
    assert (tmp_path / "ok.onnx").exists()
