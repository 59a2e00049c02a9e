"""``python train.py serve`` end to end: a CMPO checkpoint trained here on the tiny model, served by the same
config in a separate process, answers the official ``openai`` client with a ``steer`` exactly as ``predict
--steer`` does with those weights; ``steerzoo-serve`` is the same command."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import openai
import pytest
import tomllib

from lightning_modules.cli import serve_main
from tests.test_cli import CMPO, NO_LORA, ROOT, TINY, cli

STEERS = [{"verbosity": 1.0}, {"sentiment": 1.0}]


class ServeProcess:
    """``train.py serve ... --port 0`` in a subprocess; ``url`` is read from the address it prints."""

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "serve", *args, "--port", "0"],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.url: str | None = None
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(timeout=180) or self.url is None:
            self.close()
            raise RuntimeError("serve did not start:\n" + "".join(self.lines[-40:]))

    def _read(self) -> None:
        for line in self.proc.stdout:  # keeps the pipe drained for as long as the server logs
            self.lines.append(line)
            if "steerzoo: serving" in line:
                self.url = line.split(" on ")[1].split()[0]
                self.ready.set()
        self.ready.set()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.mark.slow
def test_a_served_cmpo_checkpoint_replies_exactly_as_predict_with_the_same_steer(tmp_cwd):
    (tmp_cwd / "no_lora.yaml").write_text(NO_LORA)
    root = tmp_cwd / "run"
    # a high learning rate: after 2 steps the two heads differ enough to give different greedy replies
    args = ["--config", str(tmp_cwd / "no_lora.yaml"), *CMPO, "--model.init_args.optim.lr", "0.05",
            "--seed_everything", "0", "--data.init_args.max_samples", '{"train": 24, "validation": 4, "predict": 6}']
    cli("cmpo", "fit", root, *args, "--trainer.max_steps", "2")
    last = root / "checkpoints" / "last.ckpt"
    predicted, prompts = {}, {}
    for steer in STEERS:
        run = cli("cmpo", "predict", root, *args, "--steer", json.dumps(steer), "--ckpt_path", str(last))
        newest = max((root / "predictions").glob("predict-*.jsonl"), key=lambda p: p.stat().st_mtime_ns)
        rows = [json.loads(line) for line in newest.read_text().splitlines()]
        predicted[json.dumps(steer)] = {r["idx"]: r["completion"] for r in rows}
        # predict cuts over-long prompts (length_policy truncate); the server refuses them instead (400)
        prompts = {int(r["idx"]): r["prompt"] for r in run.datamodule.datasets["predict"] if r["length_status"] == "ok"}
    assert prompts and predicted[json.dumps(STEERS[0])] != predicted[json.dumps(STEERS[1])]  # the steer matters here

    server = ServeProcess(["--config", str(ROOT / "configs" / "cmpo.yaml"), *TINY, "--trainer.default_root_dir",
                           str(root), *args, "--ckpt_path", str(last)])
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        (card,) = client.models.list().data
        assert card.id == "run" and card.attributes == ["verbosity", "sentiment"]  # the run directory's name
        for steer in STEERS:
            for idx, messages in prompts.items():
                reply = client.chat.completions.create(model="run", messages=messages, seed=0, temperature=0,
                                                       max_tokens=8, extra_body={"steer": steer})
                assert reply.choices[0].message.content == predicted[json.dumps(steer)][idx], (steer, idx)
    finally:
        server.close()
    assert server.proc.returncode is not None


def test_steerzoo_serve_is_train_py_serve(monkeypatch, capsys):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["steerzoo-serve"] == "lightning_modules.cli:serve_main"
    monkeypatch.setattr(sys, "argv", ["steerzoo-serve", "--help"])
    with pytest.raises(SystemExit) as done:
        serve_main()
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--ckpt_path", "--host", "--port", "--api_key", "--model_name", "--max_batch"))


def test_serve_refuses_a_checkpoint_of_another_model(tmp_cwd):
    """The configured module checks the checkpoint before serving it (``on_load_checkpoint``)."""
    from lightning_modules.serving import serving_app

    (tmp_cwd / "no_lora.yaml").write_text(NO_LORA)
    dpo_root = tmp_cwd / "dpo"
    cli("dpo", "fit", dpo_root, "--trainer.max_steps", "1")
    built = cli("cmpo", "serve", tmp_cwd / "cmpo", "--config", str(tmp_cwd / "no_lora.yaml"), *CMPO, run=False)
    with pytest.raises(ValueError, match="is from another model: it holds DPO"):
        serving_app(built.trainer, built.model, str(dpo_root / "checkpoints" / "last.ckpt"))
