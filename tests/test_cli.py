"""End to end through ``train.py``'s CLI on the tiny model: fit (DPO, SFT, reward model) writes every output under
``trainer.default_root_dir``; ``best`` is weights-only and ``last`` resumable; predict never overwrites; ``--steer``
works for every steerable method through one path; saved CMPO heads reload with the same logits."""

import json
from pathlib import Path

import pytest
import torch

from lightning_modules.cli import main
from tests.factories import TINY_CLI

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    *TINY_CLI,
    "--model.init_args.sampling.max_new_tokens", "8",
    "--data.init_args.max_samples", '{"train": 8, "validation": 4, "predict": 3}',
    "--trainer.val_check_interval", "2",
    "--trainer.max_epochs", "10",
]


def cli(method: str, subcommand: str, root: Path, *extra: str, run: bool = True):
    """``train.py <subcommand> --config configs/<method>.yaml`` on the tiny model (``run=False``: build only)."""
    return main(([subcommand] if run else []) + ["--config", str(ROOT / "configs" / f"{method}.yaml"), *TINY,
                                                 "--trainer.default_root_dir", str(root), *extra], run=run)


def files_under(path: Path) -> dict[str, float]:
    return {str(p.relative_to(path)): p.stat().st_mtime for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize("method", ["dpo", "sft", "reward_model"])
def test_fit_writes_every_output_under_its_root(tmp_cwd, method):
    root = tmp_cwd / "elsewhere"
    cli(method, "fit", root, "--trainer.max_steps", "2")
    assert not (tmp_cwd / "runs").exists() and not (tmp_cwd / "outputs").exists()
    # the reward model's config writes a fixed <root>/hf (configs/meet.yaml's judge reads it); the others <log_dir>/hf
    hf = root / "hf" if method == "reward_model" else root / "csv" / "version_0" / "hf"
    assert (hf / "config.json").exists() and (hf / "tokenizer_config.json").exists()
    assert (root / "csv" / "version_0" / "metrics.csv").exists() and list((root / "tb").rglob("events.*"))
    assert (root / "data_reports" / "counts.json").exists()
    last = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 and last["optimizer_states"]  # resumable
    (best,) = (root / "checkpoints").glob("best-*.ckpt")
    best = torch.load(best, weights_only=True)
    assert "optimizer_states" not in best and best["state_dict"]  # weights only: what validate/test/predict need
    if method == "reward_model":
        assert (hf / "value_head.safetensors").exists()


def test_runs_with_another_root_or_run_name_leave_earlier_runs_intact(tmp_cwd):
    cli("dpo", "fit", tmp_cwd / "a", "--trainer.max_steps", "2")
    before = files_under(tmp_cwd / "a")
    cli("dpo", "fit", tmp_cwd / "b", "--trainer.max_steps", "2")
    cli("dpo", "fit", tmp_cwd / "a", "--run_name", "second", "--trainer.max_steps", "2")
    after = files_under(tmp_cwd / "a")
    assert {k: v for k, v in after.items() if not k.startswith("second/")} == before  # nothing rewritten
    assert (tmp_cwd / "a" / "second" / "checkpoints" / "last.ckpt").exists()
    assert (tmp_cwd / "b" / "checkpoints" / "last.ckpt").exists() and not (tmp_cwd / "runs").exists()


def test_resume_from_last_and_predict_never_overwrites(tmp_cwd):
    root = tmp_cwd / "run"
    cli("dpo", "fit", root, "--trainer.max_steps", "2")
    last = root / "checkpoints" / "last.ckpt"
    assert "ref_logps" in torch.load(last, weights_only=True)
    cli("dpo", "fit", root, "--trainer.max_steps", "3", "--ckpt_path", "last")  # same folder: no crash
    assert torch.load(last, weights_only=True)["global_step"] == 3
    for _ in range(2):
        cli("dpo", "predict", root, "--ckpt_path", str(last))
    files = sorted((root / "predictions").glob("predict-*.jsonl"))
    assert len(files) == 2  # the second predict wrote a new file
    for f in files:
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        assert len(rows) == 3 and {"prompt", "completion", "truncated", "idx"} <= set(rows[0])
        meta = json.loads(f.with_name(f.stem + ".meta.json").read_text())
        assert meta["ckpt_path"] == str(last) and meta["rows"] == 3 and meta["sampling"]["max_new_tokens"] == 8
    named = ["--trainer.callbacks+=callbacks.artifacts.JsonlPredictionWriter",
             f"--trainer.callbacks.output_path={files[0]}"]
    content = files[0].read_text()
    with pytest.raises(FileExistsError, match="--overwrite"):
        cli("dpo", "predict", root, *named, "--ckpt_path", str(last))
    assert files[0].read_text() == content
    cli("dpo", "predict", root, *named, "--overwrite", "true", "--ckpt_path", str(last))


NO_LORA = "model:\n  init_args:\n    backbone:\n      lora: null\n"  # the tiny model trains fully
CMPO = ["--data.init_args.max_samples", '{"train": 24, "validation": 4, "predict": 3}', "--data.init_args.batch_size", "2"]


def test_cmpo_fit_resume_predict_with_two_steers_and_heads_reload(tmp_cwd):
    """configs/cmpo.yaml end to end: fit (stopping mid-run), resume, predict under two steering vectors with
    ``--steer``; the saved directory reloads its trained heads: same logits under two Λ."""
    (tmp_cwd / "no_lora.yaml").write_text(NO_LORA)
    root = tmp_cwd / "run"
    cmpo = ["--config", str(tmp_cwd / "no_lora.yaml"), *CMPO]
    cli("cmpo", "fit", root, *cmpo, "--trainer.max_steps", "2")
    trained = cli("cmpo", "fit", root, *cmpo, "--trainer.max_steps", "4", "--ckpt_path", "last").model
    last = root / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4
    assert list(root.rglob("steering/sweep.png"))
    for steer, want in (('{"verbosity": 1.0}', {"verbosity": 1.0, "sentiment": 0.0}),
                        ('{"sentiment": 1.0}', {"verbosity": 0.0, "sentiment": 1.0})):
        cli("cmpo", "predict", root, *cmpo, "--steer", steer, "--ckpt_path", str(last))
        newest = max((root / "predictions").glob("predict-*.jsonl"), key=lambda p: p.stat().st_mtime_ns)
        rows = [json.loads(line) for line in newest.read_text().splitlines()]
        assert rows[0]["steer"] == want
    hf = sorted(root.rglob("hf/plural_heads.safetensors"))[-1].parent
    reloaded = cli("cmpo", "fit", tmp_cwd / "reload", *cmpo, "--model.init_args.backbone.name_or_path", str(hf),
                   run=False).model
    reloaded.configure_model()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    for lam in ({"verbosity": 1.0}, {"verbosity": 0.3, "sentiment": 0.7}):
        with torch.no_grad(), trained.steer(lam):
            want_logits = trained.model(input_ids=ids).logits
        with torch.no_grad(), reloaded.steer(lam):
            got = reloaded.model(input_ids=ids).logits
        torch.testing.assert_close(got, want_logits, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), reloaded.steer({"verbosity": 1.0}):
        one = reloaded.model(input_ids=ids).logits
    assert not torch.allclose(one, got, atol=1e-4)  # the two Λ really give different logits


STEERABLE = {  # one config per steerable method, all steered on "verbosity" through --steer
    "cmpo": ["--config", "NO_LORA", *CMPO],
    "meet": ["--model.init_args.attributes", "[verbosity, brevity]", "--model.init_args.control.length", "2"],
    "acm": ["--model", "lightning_modules.steerlm.SteerLMConditionedSFT",
            "--model.init_args.attributes", "[verbosity, sentiment]", "--model.init_args.tokenize.prompt_format", "plain",
            "--data.init_args.scorers", "[verbosity, sentiment]", "--data.init_args.max_samples",
            '{"train": 8, "validation": 4, "predict": 3}', "--trainer.val_check_interval", "null"],
}


@pytest.mark.parametrize("method", ["cmpo", "meet", "acm"])
def test_predict_steer_is_one_flag_for_every_steerable_method(tmp_cwd, method):
    (tmp_cwd / "no_lora.yaml").write_text(NO_LORA)
    args = [str(tmp_cwd / "no_lora.yaml") if a == "NO_LORA" else a for a in STEERABLE[method]]
    config = "cmpo" if method == "acm" else method
    root = tmp_cwd / "run"
    cli(config, "fit", root, *args, "--trainer.max_steps", "1")
    cli(config, "predict", root, *args, "--steer", '{"verbosity": 1}', "--ckpt_path",
        str(root / "checkpoints" / "last.ckpt"))
    (out,) = (root / "predictions").glob("predict-*.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["steer"]["verbosity"] == 1.0 for r in rows)
    if method == "meet":
        assert rows[0]["control"] == "good"  # verbosity names MEET's good control here
    if method == "acm":
        assert rows[0]["conditioning"] == "verbosity:4,sentiment:0"


@pytest.mark.parametrize("method", ["cmpo", "meet", "acm"])
def test_unknown_steer_attribute_fails_before_the_model_loads(tmp_cwd, method, monkeypatch):
    import zoo.backbone as backbone

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the steer was checked")

    monkeypatch.setattr(backbone, "load_base_model", no_load)
    (tmp_cwd / "no_lora.yaml").write_text(NO_LORA)
    args = [str(tmp_cwd / "no_lora.yaml") if a == "NO_LORA" else a for a in STEERABLE[method]]
    with pytest.raises(ValueError, match=r"unknown attribute\(s\) \['helpfulness'\]; this model steers \['verbosity'"):
        cli("cmpo" if method == "acm" else method, "predict", tmp_cwd, *args, "--steer", '{"helpfulness": 1}')


def test_unsteerable_method_refuses_a_steer(tmp_cwd):
    with pytest.raises(ValueError, match="not steerable"):
        cli("dpo", "predict", tmp_cwd, "--steer", '{"verbosity": 1}', run=False)


BF16_ARGS = ["--config", str(ROOT / "configs" / "dpo.yaml"), "--model.init_args.backbone.name_or_path", "builtin:tiny",
             "--trainer.accelerator", "cpu"]


def test_bf16_falls_back_to_fp32_on_a_cpu_without_bf16(monkeypatch, capsys):
    import zoo.precision as precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    cli = main([*BF16_ARGS], run=False)
    assert cli.trainer.precision == "32-true"
    assert "no bf16 instructions" in capsys.readouterr().out
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    cli = main([*BF16_ARGS], run=False)
    assert cli.trainer.precision == "bf16-mixed"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    cli = main([*BF16_ARGS, "--bf16_fallback", "false"], run=False)
    assert cli.trainer.precision == "bf16-mixed"  # the user's explicit choice wins
