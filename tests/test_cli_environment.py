"""Flags whose defaults come from SPLITLAB_* variables: a value outside the flag's choices is a clear
error naming the variable (argparse itself checks only values given as flags)."""

import pytest

@pytest.mark.parametrize("module, variable, value", [
    ("cloud_server.__main__", "SPLITLAB_CLOUD_RUNTIME", "jax"),
    ("edge_client.__main__", "SPLITLAB_DEVICE", "tpu"),
    ("attacker.__main__", "SPLITLAB_LOG_LEVEL", "loud"),
])
def test_every_cli_refuses_an_environment_value_outside_its_choices(monkeypatch, module, variable, value):
    import importlib

    from models.errors import SplitlabError

    monkeypatch.setenv(variable, value)
    with pytest.raises((SystemExit, SplitlabError), match=f"{variable} must be one of .*, got '{value}'"):
        importlib.import_module(module).build_parser()
