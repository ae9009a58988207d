"""The removal-attack suite (issue 24): every registered attack runs on a digits MLP and CNN owner and records
its cost; output transforms keep the top class where they say so; structured pruning gives a smaller model
that is still a suspect; extraction through a URL is charged exactly what the server saw; a chained attack is
one bench row."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys

import pytest
import torch
from torch import nn

import modelseal as ms
from modelseal import attacks
from modelseal.attacks import AttackError
from modelseal.suspect import Suspect

FAMILIES = {"input", "output", "rejection", "modification", "extraction", "chain"}

# Light parameters so that every attack runs in about a second on digits; defaults elsewhere.
QUICK = {
    "finetune": {"epochs": 1}, "fine-prune": {"epochs": 1}, "distill": {"epochs": 1},
    "overwrite": {"n": 10, "extra_epochs": 1}, "collude": {"k": 2},
    "structured-prune": {"epochs": 1}, "finetune-reg": {"epochs": 1}, "refit": {"epochs": 1},
    "neural-cleanse": {"steps": 10, "epochs": 1}, "dehydrate": {"steps": 10, "epochs": 1},
    "knockoff": {"queries": 200, "epochs": 1}, "knockoff-adaptive": {"queries": 200, "epochs": 1, "rounds": 2},
    "retrain-xarch": {"queries": 200, "epochs": 1}, "transfer": {"epochs": 1, "finetune_epochs": 0},
    # aimed at the API guard: 200 queries each (vote: 40 inputs x 5 copies; ensemble: 100 inputs x 2 APIs)
    "vote": {"queries": 40, "copies_per_input": 5, "epochs": 1}, "smooth-labels": {"queries": 200, "epochs": 1},
    "ensemble-distill": {"queries": 100, "epochs": 1}, "adv-student": {"queries": 200, "epochs": 1},
    "chain": {"steps": [{"attack": "structured-prune", "params": {"amount": 0.3, "epochs": 1}},
                        {"attack": "knockoff", "params": {"queries": 200, "epochs": 1}}]},
}


@pytest.fixture(scope="module")
def digits():
    return ms.data.load("digits", seed=0)


def _owner(digits, arch: str, seed: int = 0, epochs: int = 8) -> nn.Module:
    m = ms.models.build(arch, digits.meta, seed=seed)
    ms.train.fit(m, digits.owner, epochs=epochs, seed=seed, progress=False)
    return m.eval()


@pytest.fixture(scope="module")
def owners(digits):
    return {arch: _owner(digits, arch) for arch in ("mlp", "cnn")}


@pytest.fixture(scope="module")
def peers(digits):
    return {arch: _owner(digits, arch, seed=5, epochs=3) for arch in ("mlp", "cnn")}


def _make(name: str, peer: nn.Module):
    params = dict(QUICK.get(name, {}))
    if name == "average":
        params["others"] = [peer]
    return attacks.get(name)(**params, progress=False) if _takes_progress(name) else attacks.get(name)(**params)


def _takes_progress(name: str) -> bool:
    cls = attacks.get(name)
    return dataclasses.is_dataclass(cls) and "progress" in {f.name for f in dataclasses.fields(cls)}


def test_thirty_attacks_in_five_families_and_the_static_table_agrees():
    names = attacks.names()
    assert len(names) >= 30
    assert set(attacks.FAMILIES) == set(names)
    for name in names:
        assert attacks.get(name).family == attacks.FAMILIES[name], name
    groups = attacks.by_family()
    assert FAMILIES - {"chain"} <= set(groups)
    assert sum(len(v) for v in groups.values()) == len(names)


# the attacks that train longest on the CNN (trigger-set embedding, per-class trigger search) run in the slow set
HEAVY = {("overwrite", "cnn"), ("neural-cleanse", "cnn")}


@pytest.mark.parametrize("name,arch", [pytest.param(n, a, marks=pytest.mark.slow) if (n, a) in HEAVY else (n, a)
                                       for n in attacks.names() for a in ("mlp", "cnn")])
def test_every_attack_runs_and_records_its_cost(name, arch, owners, peers, digits):
    owner, peer = owners[arch], peers[arch]
    before = {k: v.clone() for k, v in owner.state_dict().items()}
    atk = _make(name, peer)
    out = atk.apply_many([owner, peer][:atk.copies], digits.attacker) if atk.copies > 1 else \
        atk.apply(owner, digits.attacker)
    assert all(torch.equal(before[k], v) for k, v in owner.state_dict().items()), "the input model changed"
    cost = atk.cost
    assert set(cost) >= {"wall_s", "examples", "data_fraction", "queries"}
    assert cost["wall_s"] >= 0 and 0 <= cost["data_fraction"] <= 1 and cost["queries"] >= 0
    assert isinstance(out, nn.Module)
    x, y = digits.test.x, digits.test.y
    if atk.acts_on == "queries":
        suspect = atk.wrap(Suspect(out), digits.meta)
        assert isinstance(suspect, Suspect) and suspect.module is None
        labels = suspect.labels(x)
        assert atk.query_stats["answered"] == len(x)
    else:
        labels = Suspect(out).labels(x)
    assert labels.shape == y.shape and int(labels.min()) >= 0 and int(labels.max()) < 10
    if atk.family != "extraction":  # a one-epoch student on 200 answers may still be near chance
        assert float((labels == y).float().mean()) > 0.1  # an answer, not garbage
    if "queries" in QUICK.get(name, {}):
        assert cost["queries"] == 200
    if atk.family in ("rejection",) or name in ("finetune", "refit", "structured-prune", "knockoff"):
        assert cost["examples"] > 0


def _tied_logits(n: int = 400, classes: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, classes, generator=g) * 3
    z[: n // 4, 1] = z[: n // 4, 0] + 1e-4  # near ties between the two top classes
    z[n // 4: n // 2] *= 1e-3  # almost flat answers
    return z


class _Fixed(nn.Module):
    """A 'model' that answers the logits stored for each input index (inputs are indices)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("z", logits)
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.z[x.reshape(len(x), -1)[:, 0].long()] + self.w


@pytest.mark.parametrize("name,params", [
    ("softmax", {}), ("temperature", {"temperature": 0.3}), ("temperature", {"temperature": 50.0}),
    ("top-k", {"k": 1}), ("top-k", {"k": 3, "renormalize": True}), ("round", {"decimals": 0}),
    ("round", {"decimals": 1}), ("round", {"decimals": 3}), ("label-only", {}),
])
def test_output_transforms_keep_the_top_class(name, params, owners, digits):
    atk = attacks.get(name)(**params)
    assert atk.keeps_argmax
    z = _tied_logits()
    fixed = _Fixed(z)
    s = atk.wrap(Suspect(fixed, input_shape=(1,)), None)
    idx = torch.arange(len(z), dtype=torch.float32).reshape(-1, 1)
    assert torch.equal(s.predict(idx).argmax(1), z.argmax(1))
    for owner in owners.values():
        x = digits.test.x
        assert torch.equal(atk.wrap(Suspect(owner), digits.meta).labels(x), Suspect(owner).labels(x))


def test_noisy_output_transforms_say_they_may_change_the_top_class():
    for name in ("logit-noise", "prob-noise", "reverse-sigmoid"):
        assert not attacks.get(name).keeps_argmax


def test_structured_pruning_gives_a_smaller_model_accepted_as_a_black_box_suspect(owners, digits):
    from modelseal.attacks.modification import parameter_count

    for owner in owners.values():
        pruned = attacks.get("structured-prune")(amount=0.5, epochs=2).apply(owner, digits.attacker)
        assert parameter_count(pruned) < 0.6 * parameter_count(owner)
        assert ms.train.evaluate(pruned, digits.test) > 0.7
        out = pruned(torch.zeros(3, *digits.meta.input_shape))
        assert out.shape == (3, 10)
        backend = Suspect(pruned)
        black = Suspect(lambda x, b=backend: b.predict(x), input_shape=digits.meta.input_shape)
        assert black.module is None
        assert torch.equal(black.labels(digits.test.x), Suspect(pruned).labels(digits.test.x))


def test_structured_pruned_model_is_judged_by_a_key(owners, digits):
    owner = copy.deepcopy(owners["mlp"])
    fp_key = ms.methods.get("tafa")(n=40, steps=5, seed=0).extract(owner, input_spec=digits.meta)
    pruned = attacks.get("structured-prune")(amount=0.2, epochs=1).apply(owner, digits.attacker)
    v = ms.verify(Suspect(pruned), fp_key)
    assert 0 <= v.p_value <= 1 and v.queries > 0


def test_permutation_preserves_the_function_and_changes_the_weights(owners, digits):
    for owner in owners.values():
        for rescale in (False, True):
            out = attacks.get("permute")(rescale=rescale, seed=3).apply(owner)
            x = digits.test.x
            torch.testing.assert_close(ms.train.predict(out, x), ms.train.predict(owner, x), rtol=1e-4, atol=1e-4)
            first = next(m for m in out.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
            orig = next(m for m in owner.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
            assert not torch.equal(first.weight, orig.weight)


def test_permutation_of_a_residual_network_keeps_its_function(digits):
    """The permutation attack permutes each residual block's inner channels (BatchNorm with them), so a
    ResNet's answers are unchanged while its weights move (it used to refuse any non-chain network)."""
    m = ms.models.build("resnet18", digits.meta, seed=0).eval()
    permuted = attacks.get("permute")(seed=1).apply(m).eval()
    x = digits.test.x[:16]
    with torch.no_grad():
        assert torch.allclose(m(x), permuted(x), atol=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(m.state_dict().values(), permuted.state_dict().values(),
                                                     strict=True))


@pytest.mark.parametrize("name,params", [
    ("structured-prune", {"epochs": 1}), ("refit", {"epochs": 1}), ("knockoff", {"queries": 150, "epochs": 1}),
    ("dehydrate", {"steps": 5, "epochs": 1}),
])
def test_same_seed_same_attack(name, params, owners, digits):
    a = attacks.get(name)(seed=2, **params).apply(owners["mlp"], digits.attacker)
    b = attacks.get(name)(seed=2, **params).apply(owners["mlp"], digits.attacker)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_query_side_answers_are_deterministic_given_the_seed(owners, digits):
    x = digits.test.x[:50]
    for name in ("input-noise", "shift", "flip", "input-quantize", "logit-noise", "prob-noise"):
        answers = [attacks.get(name)(seed=4).wrap(Suspect(owners["cnn"]), digits.meta).predict(x) for _ in range(2)]
        assert torch.equal(*answers), name


def test_rejection_flags_about_its_rate_on_test_data(owners, digits):
    for name in ("reject-softmax", "reject-mahalanobis"):
        atk = attacks.get(name)(reject_rate=0.1)
        atk.apply(owners["mlp"], digits.attacker)
        s = atk.wrap(Suspect(owners["mlp"]), digits.meta)
        s.labels(digits.test.x)
        rate = atk.query_stats["rejected"] / atk.query_stats["answered"]
        assert 0.02 < rate < 0.35, (name, rate)
    # inputs far from the attacker's data are flagged by the feature-space detector (a ReLU network's softmax
    # is confident far away, so the max-softmax detector does not see them: the known weakness of that score)
    noise = torch.rand(200, *digits.meta.input_shape, generator=torch.Generator().manual_seed(0)) * 4
    s.labels(noise)
    assert (atk.query_stats["rejected"] - rate * len(digits.test.x)) / 200 > 0.5


def test_extraction_through_a_url_is_charged_exactly_what_the_server_saw(owners, digits):
    pytest.importorskip("uvicorn")
    from modelseal.suspect import serve

    app = serve.make_app(owners["mlp"])
    with serve.background(app) as base:
        atk = attacks.get("knockoff")(queries=250, epochs=2, student="mlp")
        student = atk.apply(f"{base}/v2/models/model", digits.attacker)
    assert atk.cost["queries"] == app.state.stats["inputs"] == 250
    assert isinstance(student, nn.Module) and ms.train.evaluate(student, digits.test) > 0.3


def test_extraction_from_an_onnx_file_under_a_budget(owners, digits, tmp_path):
    path = tmp_path / "m.onnx"
    ms.models.export_onnx(owners["cnn"], path)
    suspect = Suspect.load(path, max_queries=300)
    atk = attacks.get("knockoff-adaptive")(queries=300, epochs=2, rounds=3)
    student = atk.apply(suspect, digits.attacker)
    assert atk.cost["queries"] == suspect.queries == 300
    assert student(torch.zeros(1, *digits.meta.input_shape)).shape == (1, 10)
    with pytest.raises(ms.errors.BudgetExceeded):
        attacks.get("knockoff")(queries=301, epochs=1).apply(Suspect.load(path, max_queries=300), digits.attacker)


def test_transfer_needs_the_weights(owners, digits, tmp_path):
    path = tmp_path / "m.onnx"
    ms.models.export_onnx(owners["mlp"], path)
    with pytest.raises(AttackError, match="nn.Module"):
        attacks.get("transfer")(epochs=1).apply(Suspect.load(path), digits.attacker)


def test_chain_feeds_a_query_side_step_into_extraction(owners, digits):
    chain = attacks.get("chain")(steps=[{"attack": "label-only"},
                                        {"attack": "knockoff", "params": {"queries": 200, "epochs": 1}}])
    student = chain.apply(owners["mlp"], digits.attacker)
    assert chain.acts_on == "queries"  # a query-side step, consumed by the extraction: nothing left to wrap
    assert chain.wrap(Suspect(student), digits.meta).module is not None
    assert [s["attack"] for s in chain.cost["steps"]] == ["label-only", "knockoff"]
    assert chain.cost["queries"] == 200
    with pytest.raises(AttackError, match="query-side"):
        attacks.get("chain")(steps=[{"attack": "softmax"}, {"attack": "prune"}]).apply(owners["mlp"], digits.attacker)
    with pytest.raises(AttackError, match="unknown attack"):
        attacks.get("chain")(steps=[{"attack": "nope"}])


CHAIN_SCENARIO = """
name = "chained"
data = "digits"
seeds = [0]
baseline = false

[owner]
arch = "mlp"
epochs = 5

[[protections]]
method = "trigger-set"
params = { n = 20, extra_epochs = 1 }

[[attacks]]
name = "prune-ft-steal"
chain = [{ attack = "structured-prune", params = { amount = 0.3, epochs = 1 } },
         { attack = "finetune", params = { epochs = 1 } },
         { attack = "knockoff", params = { queries = 300, epochs = 2 } }]

[[attacks]]
name = "reject-softmax"
params = { reject_rate = 0.05 }
"""


@pytest.mark.slow  # a whole (small) bench run: owner training, a trigger-set embedding, two cells
def test_a_combined_attack_is_one_bench_row_with_every_steps_parameters(tmp_path):
    from modelseal import bench
    from modelseal.bench.store import Store

    sc = bench.scenario.parse(CHAIN_SCENARIO, "chained.toml")
    assert [c.attack.attack for c in sc.cells] == ["chain", "reject-softmax"]
    bench.run(sc, tmp_path / "run")
    with Store(tmp_path / "run" / "results.sqlite") as s:
        rows = {r["attack_name"]: r for r in s.cells()}
    row = rows["chain"]
    assert row["status"] == "ok", row["detail"]
    assert [st["attack"] for st in row["attack_params"]["steps"]] == ["structured-prune", "finetune", "knockoff"]
    assert row["attack_params"]["steps"][2]["params"] == {"queries": 300, "epochs": 2}
    assert [st["attack"] for st in row["cost"]["steps"]] == ["structured-prune", "finetune", "knockoff"]
    assert row["cost"]["queries"] == 300 and row["cost"]["attacked_acc"] == row["attacked_acc"]
    assert row["attack_wall_s"] > 0
    rej = rows["reject-softmax"]
    assert rej["status"] == "ok" and 0 <= rej["cost"]["test_rejection_rate"] < 0.3


@pytest.mark.parametrize("chain,message", [
    ('[{ attack = "nope" }]', "unknown attack"),
    ('[{ attack = "prune", params = { amount = [0.1, 0.2] } }]', "not swept"),
    ('[]', "non-empty"),
])
def test_bad_chain_in_a_scenario_names_the_key(chain, message):
    from modelseal.bench.scenario import ScenarioError, parse

    text = CHAIN_SCENARIO.replace('[{ attack = "structured-prune", params = { amount = 0.3, epochs = 1 } },\n'
                                  '         { attack = "finetune", params = { epochs = 1 } },\n'
                                  '         { attack = "knockoff", params = { queries = 300, epochs = 2 } }]', chain)
    with pytest.raises(ScenarioError, match=message) as e:
        parse(text, "chained.toml")
    assert "line" in str(e.value) and "chain" in str(e.value)


# ------------------------------------------------------------------------------------------------ CLI
def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "modelseal.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_attack_list_is_grouped_by_family_without_torch():
    code = ("import sys\nfrom modelseal.cli import main\nsys.argv = ['modelseal', 'attack', '--list', '--json']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    payload, _, torch_loaded = r.stdout.rpartition("}")
    assert torch_loaded.strip() == "False"
    import json

    data = json.loads(payload + "}")
    assert set(data["families"]) >= FAMILIES - {"chain"}
    assert sorted(n for ns in data["families"].values() for n in ns) == sorted(data["attacks"])


@pytest.fixture(scope="module")
def model_file(owners, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    ms.models.save_model(owners["mlp"], d / "owner.safetensors")
    return d


def test_query_side_attacks_refuse_and_say_where_they_apply(model_file):
    for name in ("perturb", "softmax", "reject-softmax"):
        r = _cli("attack", name, "owner.safetensors", "--data", "digits", "--out", "x.safetensors", cwd=model_file)
        assert r.returncode == 2 and "query-side" in r.stderr and "modelseal bench" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (model_file / "x.safetensors").exists()


def test_collude_from_the_cli_averages_the_other_copies(model_file, peers):
    ms.models.save_model(peers["mlp"], model_file / "peer.safetensors", force=True)
    r = _cli("attack", "collude", "owner.safetensors", "--data", "digits", "--out", "c.safetensors", cwd=model_file)
    assert r.returncode == 2 and "--other" in r.stderr
    r = _cli("attack", "collude", "owner.safetensors", "--other", "peer.safetensors", "--set", "k=2", "--data",
             "digits", "--out", "c.safetensors", "--json", cwd=model_file)
    assert r.returncode == 0, r.stderr
    c = ms.models.load_model(model_file / "c.safetensors")
    w = c.state_dict()["net.1.weight"]
    expect = (ms.models.load_model(model_file / "owner.safetensors").state_dict()["net.1.weight"]
              + peers["mlp"].state_dict()["net.1.weight"]) / 2
    torch.testing.assert_close(w, expect)


def test_structured_prune_from_the_cli_saves_a_loadable_model_or_says_why(model_file, digits):
    r = _cli("attack", "structured-prune", "owner.safetensors", "--data", "digits", "--set", "epochs=1", "--out",
             "sp.safetensors", "--force", cwd=model_file)
    if r.returncode == 0:  # once model files record a changed architecture
        back = ms.models.load_model(model_file / "sp.safetensors")
        assert back(torch.zeros(1, *digits.meta.input_shape)).shape == (1, 10)
    else:
        assert r.returncode == 2 and "another architecture" in r.stderr and "nothing was written" in r.stderr
        assert not (model_file / "sp.safetensors").exists()


def test_knockoff_from_the_cli_steals_an_onnx_file(model_file, owners):
    ms.models.export_onnx(owners["mlp"], model_file / "m.onnx")
    r = _cli("attack", "knockoff", "m.onnx", "--data", "digits", "--set", "queries=200", "--set", "epochs=2",
             "--out", "stolen.safetensors", "--json", cwd=model_file)
    assert r.returncode == 0, r.stderr
    import json

    payload = json.loads(r.stdout)
    assert payload["family"] == "extraction" and payload["cost"]["queries"] == 200
    assert ms.models.load_model(model_file / "stolen.safetensors") is not None


def test_the_demo_scenario_has_an_attack_of_every_family():
    from modelseal import bench

    used = {attacks.FAMILIES[c.attack.attack] for c in bench.load("demo").cells if c.attack.attack != "none"}
    assert used >= FAMILIES


# ART's KnockoffNets (random selection) as the reference for the native knockoff: the same MLP owner, the same
# pool (the attacker split), the same budget (500 queries), the same student (a zoo MLP from seed 1), the same
# epochs, batch size and Adam learning rate. ART labels its queries one-hot (use_probability=False: ART fits
# with cross-entropy on class indices either way); the native attack trains on the soft answers.
# The margin is the project's "comparable accuracy" rule (5 points, as for a removal). Measured 2026-12-06 on the
# shared 2-core machine: native 0.892, ART 0.917 (the native student is 2.5 points below ART's here).
KNOCKOFF_MARGIN = 0.05


@pytest.mark.slow  # about 5 minutes with the owners' training on the loaded shared machine
def test_native_knockoff_is_as_good_as_arts_knockoffnets_on_the_same_budget(owners, digits):
    np = pytest.importorskip("numpy")
    pytest.importorskip("art", reason="ART is in the dev extra (pip install -e .[dev])")
    from art.attacks.extraction import KnockoffNets
    from art.estimators.classification import PyTorchClassifier

    budget, epochs, lr, batch = 500, 10, 1e-3, 64
    owner = owners["mlp"]
    shape, classes = tuple(digits.meta.input_shape), digits.meta.num_classes
    native = attacks.get("knockoff")(queries=budget, epochs=epochs, lr=lr, batch_size=batch, student="mlp", seed=1)
    native_student = native.apply(owner, digits.attacker)
    assert native.cost["queries"] == budget

    student = ms.models.build("mlp", digits.meta, seed=1)
    victim = PyTorchClassifier(model=copy.deepcopy(owner), loss=nn.CrossEntropyLoss(), input_shape=shape,
                               nb_classes=classes, clip_values=tuple(digits.meta.bounds), device_type="cpu")
    thief = PyTorchClassifier(model=student, loss=nn.CrossEntropyLoss(), input_shape=shape, nb_classes=classes,
                              optimizer=torch.optim.Adam(student.parameters(), lr=lr),
                              clip_values=tuple(digits.meta.bounds), device_type="cpu")
    np.random.seed(1)  # ART draws its random queries from numpy's global generator
    stolen = KnockoffNets(victim, batch_size_fit=batch, batch_size_query=batch, nb_epochs=epochs, nb_stolen=budget,
                          sampling_strategy="random", verbose=False).extract(
        digits.attacker.x.numpy().astype(np.float32), thieved_classifier=thief)
    art_acc = float((stolen.predict(digits.test.x.numpy().astype(np.float32)).argmax(1)
                     == digits.test.y.numpy()).mean())
    native_acc = ms.train.evaluate(native_student, digits.test)
    print(f"knockoff on digits, {budget} queries: native {native_acc:.3f}, ART KnockoffNets {art_acc:.3f}")
    assert art_acc > 0.5  # the reference itself learned the task, so the comparison means something
    assert native_acc >= art_acc - KNOCKOFF_MARGIN
