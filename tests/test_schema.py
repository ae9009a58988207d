"""One parameter schema per method and attack (modelseal.schema): complete, read torch-free from source
exactly as the imported class declares it, checked at construction, the verifier's rule, and scenarios."""

from __future__ import annotations

import dataclasses

import pytest

from modelseal import attacks, methods, schema
from modelseal.attacks import AttackError
from modelseal.errors import ModelSealError
from modelseal.methods.base import BASES, Method

EVERY = [("method", n) for n in methods._BUILTIN] + [("attack", n) for n in attacks._BUILTIN]


def _module(kind: str, name: str) -> str:
    return (methods._MODULES if kind == "method" else attacks._MODULES)[name]


def _cls(kind: str, name: str) -> type:
    return (methods.get if kind == "method" else attacks.get)(name)


@pytest.mark.parametrize("kind,name", sorted(EVERY))
def test_every_method_and_attack_has_a_complete_schema(kind, name):
    """Every field has a type, default, range (numbers: both bounds) and meaning; meanings are distinct."""
    declared = schema.of(_cls(kind, name))
    specs = declared["params"] + declared["verifier"]
    assert specs and schema.incomplete(specs) == [], schema.incomplete(specs)
    meanings = [s.meaning for s in declared["params"]]
    assert len(set(meanings)) == len(meanings)
    fields = {f.name for f in dataclasses.fields(_cls(kind, name)) if f.name != "progress"}
    assert {s.name for s in declared["params"]} == fields
    roles = {s.role for s in declared["params"]} - {"runtime"}
    assert roles == {"protection" if kind == "method" else "attack"}
    assert {s.role for s in declared["verifier"]} <= {"verifier"}


@pytest.mark.parametrize("kind,name", sorted(EVERY))
def test_the_torch_free_reading_equals_what_the_class_declares(kind, name):
    """`modelseal methods NAME` reads the module's source; it must agree with the imported class exactly."""
    assert schema.read(_module(kind, name), name, "protection" if kind == "method" else "attack") == \
        schema.of(_cls(kind, name))


@pytest.mark.parametrize("kind,name", sorted(EVERY))
def test_construction_checks_every_declared_number(kind, name):
    """A value just outside each declared numeric range is refused with one line naming the parameter."""
    cls = _cls(kind, name)
    error = AttackError if kind == "attack" else ModelSealError
    for s in schema.fields_of(cls):
        if s.base not in ("int", "float") or s.role == "runtime":
            continue
        bad = s.hi + 1 if s.hi is not None and s.hi < 2**62 else (s.lo - 1 if s.lo is not None else None)
        if bad is None:
            continue
        with pytest.raises(error, match=s.name):
            cls(**{s.name: bad})
        with pytest.raises(error, match=s.name):
            cls(**{s.name: float("nan")})


def test_choices_text_and_booleans_are_checked():
    with pytest.raises(ModelSealError, match="unknown mode 'sideways'; use one of pretrained, scratch"):
        methods.get("trigger-set")(mode="sideways")
    with pytest.raises(ModelSealError, match="layer must be text of at most 256"):
        methods.get("deepmarks")(layer="x" * 2000)
    with pytest.raises(TypeError, match="beacon"):  # removed: a free-text beacon let labels be ground
        methods.get("trigger-set")(beacon="x")
    with pytest.raises(AttackError, match="relative must be true or false"):
        attacks.get("noise")(relative="yes")
    with pytest.raises(AttackError, match="seed must be an integer"):
        attacks.get("prune")(seed=-1)


def test_the_verifier_rule_comes_from_the_schema_and_refuses_unknown_names():
    tafa = methods.get("tafa")
    assert tafa.rule({}) == {"alpha": 1e-6, "margin": 0.1, "min_points": 20, "repeats": 1, "permutations": 2000,
                             "max_queries": None}
    with pytest.raises(ModelSealError, match="margin must be a number in \\[0.05, 1"):
        tafa.rule({"margin": 0.01})
    with pytest.raises(ModelSealError, match="does not take the verifier parameter\\(s\\) batch"):
        tafa.rule({"batch": 5})
    with pytest.raises(ModelSealError, match="alpha must be a number in \\(0.0, 1.0\\)"):
        methods.get("deepmarks").rule({"alpha": 0})
    # one default alpha: every judging method's alpha is the schema's one declaration
    for n in methods._BUILTIN:
        cls = methods.get(n)
        if methods.info(n).judges:
            assert cls.verify_params["alpha"] is schema.ALPHA


def test_every_method_subclasses_its_family_base_and_declares_hooks_without_probing():
    for n in methods._BUILTIN:
        cls = methods.get(n)
        assert issubclass(cls, BASES[cls.family]) and issubclass(cls, Method)
        # locks judge nothing; the lineage test's evidence would be both models' weights (no evidence file)
        assert cls.writes_evidence() == (cls.family != "lock" and n != "lineage")
    assert methods.get("trigger-set").commitment_extra is not Method.commitment_extra
    assert methods.get("tafa").commitment_extra is Method.commitment_extra


def test_registering_a_method_outside_its_family_base_is_refused():
    from modelseal.errors import RegistryError

    @dataclasses.dataclass
    class NotAWatermark:
        def embed(self, model, data, progress=None):  # pragma: no cover - never registered
            return model, None

    with pytest.raises(RegistryError, match="must subclass modelseal.methods.base.Watermark"):
        methods.register("test-not-a-watermark", family="watermark", access="labels")(NotAWatermark)


def test_scenario_parameters_are_checked_against_the_schema():
    from modelseal.bench import ScenarioError, parse

    base = 'name = "s"\ndata = "digits"\n[owner]\narch = "mlp"\nepochs = 1\n'
    with pytest.raises(ScenarioError, match="trigger-set has no parameter 'n_triggers'"):
        parse(base + '[[protections]]\nmethod = "trigger-set"\nparams = { n_triggers = 5 }\n')
    with pytest.raises(ScenarioError, match="n must be an integer in \\[1, 100000\\]"):
        parse(base + '[[protections]]\nmethod = "trigger-set"\nparams = { n = 0 }\n')
    with pytest.raises(ScenarioError, match="amount must be a number in \\[0, 1\\)"):
        parse(base + '[[protections]]\nmethod = "tafa"\n[[attacks]]\nname = "prune"\n'
              'params = { amount = [0.5, 1.5] }\n')
    sc = parse(base + '[[protections]]\nmethod = "tafa"\nparams = { margin = 0.2 }\n[[attacks]]\nname = "prune"\n'
               'params = { amount = [0.2, 0.5] }\n')
    assert len(sc.cells) == 3
