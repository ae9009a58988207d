"""modelseal's remote client against a real server nobody here wrote: Seldon's MLServer 1.7.

MLServer runs as a subprocess from its own virtual environment (`.venv-mlserver`, made by `make install`,
because it pins starlette/protobuf versions the main environment does not use), bound to 127.0.0.1 on free
ports, and is stopped at teardown. It serves four models at once:

- `torch-owner` / `torch-other`: a custom runtime (tests/oip_runtime.py) wrapping modelseal model files;
- `digits-owner` / `digits-other`: MLServer's own scikit-learn runtime with MLPClassifiers on `digits`,
  declared as FP64 [N, 64] inputs with outputs `predict` (INT64 labels) and `predict_proba` (FP64).

Each is judged through MLServer and in-process; the verdicts must be the same. For the scikit-learn models
the client must pick `predict_proba` from the metadata (MLServer's default output is `predict`, labels),
send FP64, and reshape the 1x8x8 key inputs to [N, 64]. The scikit-learn runtime only loads joblib files,
so this test writes the classifiers it trained itself with joblib (pickle) into its temporary folder for
MLServer; modelseal itself never reads or writes pickle.

Set MODELSEAL_MLSERVER to an `mlserver` executable to use another install.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import mlserver_proc
import modelseal as ms
from modelseal.suspect import Suspect

pytestmark = pytest.mark.slow  # MLServer start-up (seconds) and key extraction



_get = mlserver_proc.get


def _sk_mirror(clf) -> torch.nn.Module:
    """The torch twin of a one-hidden-layer ReLU MLPClassifier, softmax included (= predict_proba)."""
    l1, l2 = torch.nn.Linear(*clf.coefs_[0].shape), torch.nn.Linear(*clf.coefs_[1].shape)
    with torch.no_grad():
        for lin, w, b in ((l1, clf.coefs_[0], clf.intercepts_[0]), (l2, clf.coefs_[1], clf.intercepts_[1])):
            lin.weight.copy_(torch.from_numpy(w.T))
            lin.bias.copy_(torch.from_numpy(b))
    return torch.nn.Sequential(torch.nn.Flatten(), l1, torch.nn.ReLU(), l2, torch.nn.Softmax(dim=1)).eval()


def _sk_suspect(clf) -> Suspect:
    """The scikit-learn model judged in-process: the same predict_proba, float64 in, float32 out."""
    def predict(x: torch.Tensor) -> torch.Tensor:
        p = clf.predict_proba(x.reshape(len(x), -1).numpy().astype(np.float64))
        return torch.from_numpy(p.astype(np.float32))

    return Suspect(predict, input_shape=(1, 8, 8), name="sklearn in-process")


@pytest.fixture(scope="module")
def digits_models():
    from sklearn.neural_network import MLPClassifier

    data = ms.data.load("digits", seed=0)
    x = data.owner.x.reshape(len(data.owner.x), -1).numpy().astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a short fit is enough here
        models = {seed: MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=seed)
                  .fit(x, data.owner.y.numpy()) for seed in (0, 1)}
    key = ms.methods.get("tafa")(n=30).extract(_sk_mirror(models[0]), data.meta)
    return models, key


@pytest.fixture(scope="module")
def torch_models(_owner_cnn, _independent, mnist):
    key = ms.methods.get("tafa")(n=30).extract(_owner_cnn, mnist.meta)
    return {"owner": _owner_cnn, "other": _independent[3]}, key


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory, digits_models, torch_models):
    """Base URL of a running MLServer with the four models; stopped (by its PID) at teardown."""
    mlserver_proc.require()
    import joblib

    repo = tmp_path_factory.mktemp("mlserver")
    sk_models, _ = digits_models
    for name, clf in (("digits-owner", sk_models[0]), ("digits-other", sk_models[1])):
        folder = repo / name
        folder.mkdir()
        joblib.dump(clf, folder / "model.joblib")
        (folder / "model-settings.json").write_text(json.dumps({
            "name": name, "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": "1"},
            "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 64]}],
            "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]},
                        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 10]}]}))
    t_models, _ = torch_models
    for name, model in (("torch-owner", t_models["owner"]), ("torch-other", t_models["other"])):
        folder = repo / name
        folder.mkdir()
        ms.models.save_model(model, folder / "model.safetensors")
        shutil.copy(Path(__file__).with_name("oip_runtime.py"), folder / "oip_runtime.py")
        (folder / "model-settings.json").write_text(json.dumps({
            "name": name, "implementation": "oip_runtime.TorchRuntime",
            "parameters": {"uri": "./model.safetensors"},
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]}))
    with mlserver_proc.running(repo, ["digits-owner", "digits-other", "torch-owner", "torch-other"]) as base:
        yield base


def _same(a: ms.Verdict, b: ms.Verdict) -> None:
    assert (a.owned, a.queries) == (b.owned, b.queries)
    assert a.score == pytest.approx(b.score, rel=1e-9, abs=1e-12)
    assert a.p_value == pytest.approx(b.p_value, rel=1e-9, abs=1e-300)


def test_mlserver_speaks_the_protocol(mlserver):
    status, body = _get(mlserver + "/v2")
    assert status == 200 and json.loads(body)["name"] == "mlserver"
    s = Suspect.load(mlserver + "/v2/models/digits-owner", reshape=True)
    b = s._backend
    assert not b.binary  # MLServer's REST API does not list the binary tensor data extension
    assert (b.input_name, b.input_datatype, b.input_shape) == ("input-0", "FP64", (64,))
    assert b.output_name == "predict_proba" and b.output_size == 10 and not s.label_only


@pytest.mark.parametrize("which", ["owner", "other"])
def test_torch_custom_runtime_same_verdict(mlserver, torch_models, mnist, which):
    models, key = torch_models
    local = ms.verify(Suspect(models[which]), key)
    s = Suspect.load(f"{mlserver}/v2/models/torch-{which}")
    assert s._backend.input_name == "image" and s._backend.output_name == "logits"
    x = mnist.test.x[:8]
    assert torch.equal(s.predict(x), Suspect(models[which]).predict(x))  # JSON float32 is exact
    remote = ms.verify(s, key)
    _same(local, remote)
    assert remote.owned is (which == "owner")
    assert s.queries == remote.queries + 8


@pytest.mark.parametrize("which", [0, 1])
def test_sklearn_runtime_same_verdict_with_reshape(mlserver, digits_models, which):
    models, key = digits_models
    name = "digits-owner" if which == 0 else "digits-other"
    local = ms.verify(_sk_suspect(models[which]), key)
    with pytest.raises(ms.ModelSealError, match=r"input shape \(1, 8, 8\), but the suspect takes \(64,\)"):
        ms.verify(Suspect.load(f"{mlserver}/v2/models/{name}"), key)  # [N, 64] vs 1x8x8: needs reshape
    s = Suspect.load(f"{mlserver}/v2/models/{name}", reshape=True)
    remote = ms.verify(s, key)
    _same(local, remote)
    assert remote.owned is (which == 0)
    assert s.queries == remote.queries


def test_sklearn_label_output_by_name(mlserver, digits_models):
    models, _ = digits_models
    s = Suspect.load(f"{mlserver}/v2/models/digits-owner", reshape=True, output_name="predict")
    assert s.label_only
    x = ms.data.load("digits", seed=0).test.x[:20]
    want = models[0].predict(x.reshape(20, -1).numpy().astype(np.float64))
    assert s.labels(x).tolist() == want.tolist()
    with pytest.raises(ms.ModelSealError, match="no output 'scores'"):
        Suspect.load(f"{mlserver}/v2/models/digits-owner", output_name="scores")
