"""The attack registry: one list of names, keyed family/name, that every caller derives its names from."""

from __future__ import annotations

import subprocess
import sys

import pytest

from attacker.attacks import Attack, AttackParameterError, WhiteBoxAttack, attack_class, create, keys, names
from attacker.attacks import registry
from attacker.invert import add_arguments
from attacker.lab.spec import ATTACK_NAMES


def test_unknown_names_are_refused_listing_every_attack():
    with pytest.raises(AttackParameterError) as err:
        attack_class("nope")
    message = str(err.value)
    assert "unknown attack 'nope'" in message and all(key in message for key in keys())
    with pytest.raises(AttackParameterError, match="unknown attack 'inversion/nope'"):
        create("inversion/nope")
    with pytest.raises(AttackParameterError, match="unknown attack family 'nope'"):
        names("nope")
    with pytest.raises(AttackParameterError, match="must be a string"):
        attack_class(3)


@pytest.mark.parametrize("key", keys())
def test_every_registered_class_declares_its_key(key):
    cls = attack_class(key)
    family, name = key.split("/")
    assert issubclass(cls, Attack) and (cls.family, cls.name) == (family, name) and cls.key() == key
    assert key in keys(family) and name in names(family)


def test_short_names_resolve_in_the_inversion_family_only():
    assert names("inversion") == ("whitebox", "blackbox", "queryfree")
    for name in names("inversion"):
        assert registry.resolve(name) == f"inversion/{name}" and attack_class(name) is attack_class(f"inversion/{name}")
    for family in registry.families():
        if family == registry.SHORT_NAME_FAMILY:
            continue
        for name in names(family):
            if name not in names("inversion"):
                with pytest.raises(AttackParameterError, match="unknown attack"):
                    attack_class(name)


def test_create_takes_either_name_and_validates_parameters():
    short, full = create("whitebox", iterations=7), create("inversion/whitebox", {"iterations": 7})
    assert type(short) is type(full) is WhiteBoxAttack and short.params == full.params
    with pytest.raises(AttackParameterError, match="iterations must be an integer >= 1"):
        create("whitebox", iterations=0)


def test_a_class_registered_under_another_key_is_caught(monkeypatch):
    monkeypatch.setitem(registry.ATTACKS, "inversion/whitebox",
                        "attacker.attacks.inversion.blackbox:BlackBoxAttack")
    with pytest.raises(TypeError, match="maps 'inversion/whitebox' to .*inversion/blackbox"):
        attack_class("whitebox")


def test_the_cli_and_the_lab_take_their_names_from_the_registry():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    method = next(a for a in parser._actions if a.dest == "method")
    assert tuple(method.choices) == names("inversion") == ATTACK_NAMES


def test_naming_attacks_does_not_load_torch():
    code = ("import sys, attacker.attacks as a, attacker.attacks.registry as r; "
            "r.names('inversion'); r.keys(); a.names; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
