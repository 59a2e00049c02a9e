"""Every YAML under configs/ parses through the CLI (``--print_config``), alone or composed with a
method config when it is a fragment (data-only, trainer-only)."""

from pathlib import Path

import pytest

from lightning_modules.cli import main

CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/**/*.yaml"))
METHOD = str(Path(__file__).resolve().parents[1] / "configs" / "dpo.yaml")


def _is_fragment(path: Path) -> bool:
    return path.parent.name in ("data", "trainer")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_parses(path, capsys):
    args = ["fit", "--config", METHOD, "--config", str(path)] if _is_fragment(path) else ["fit", "--config", str(path)]
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "model:" in printed and "trainer:" in printed


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"dpo.yaml", "sft.yaml", "reward_model.yaml"} <= names


def test_unknown_key_is_named(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", METHOD, "--model.init_args.betaa", "0.2", "--print_config"])
    assert exit_info.value.code != 0
    assert "betaa" in capsys.readouterr().err
