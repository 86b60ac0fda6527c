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


def test_a_sniff_tap_mode_in_the_environment_builds_the_attacker_cli_and_serve_names_it(
        monkeypatch, tmp_path, capsys):
    """SPLITLAB_TAP_MODE=sniff is what the compose sniffer runs `attacker tap` with; `attacker serve`
    cannot run a sniff tap and says so (the parser holds both subcommands, so it must still build)."""
    from attacker.__main__ import build_parser, main

    monkeypatch.setenv("SPLITLAB_TAP_MODE", "sniff")
    assert build_parser().parse_args(["tap"]).mode == "sniff"
    assert main(["serve", "--store", str(tmp_path / "s"), "--artifacts", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "attacker serve runs its tap in passive or proxy mode, got 'sniff'" in err
    assert not (tmp_path / "a").exists()  # refused before anything was created
