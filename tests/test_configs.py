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


@pytest.mark.parametrize("name", ["cmpo_helpsteer_oasst", "cmpo_pku_saferlhf", "sft_llama2_7b"])
def test_cmpo_paper_configs_follow_table_a1(name):
    """The thesis's Table A.1 prompt template (<extra_id_0>System / User, <extra_id_1>Assistant) renders as printed,
    and CMPO samples within App. A.1's 1024-token total (prompt + completion)."""
    import jinja2
    import yaml

    cfg = yaml.safe_load((CONFIGS[0].parents[1] / "configs" / "paper" / f"{name}.yaml").read_text())["model"]["init_args"]
    assert cfg["tokenize"]["prompt_format"] == "chat"
    messages = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Bye?"}]
    text = jinja2.Template(cfg["backbone"]["chat_template"]).render(messages=messages, bos_token="<s>",
                                                                    add_generation_prompt=True)
    assert text == ("<s><extra_id_0>System\nA chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's questions.\n"
                    "<extra_id_0>User\nHi?\n<extra_id_1>Assistant\nHello.\n<extra_id_0>User\nBye?\n<extra_id_1>Assistant\n")
    if name.startswith("cmpo"):
        assert cfg["sampling"]["max_total_length"] == 1024 and cfg["sampling"]["max_new_tokens"] == 512
