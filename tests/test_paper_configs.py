"""Every paper set-up under ``configs/paper/`` runs end to end: each config, unchanged but for the model (the tiny
one), the data source (the shipped sample of the same dataset, every source of a mixture), the hardware (1 CPU)
and the length of the run, goes through ``fit`` (both MEET steps) and then ``predict`` (the APM, which does not
generate, through ``validate``) via the CLI. So a paper config's every other key — attributes, weighting, heads,
LoRA, controls, phases, templates, tokenization, sampling, callbacks, data options — is exercised as written.

What cannot run here, and why: the paper-scale models and the hub datasets themselves (no hub access; the
tiny model and the shipped samples stand in), and multi-GPU strategies (``configs/trainer/*`` are tested in
``tests/multiproc``). ALT's set-ups also name hub scorers (a toxicity classifier, a reward model directory, a
fluency LM), replaced by VADER sentiment, and an LLM judge (OpenAI), replaced by a scripted OpenAI-compatible
endpoint on 127.0.0.1 that answers every category or critique prompt in the paper's format."""

import contextlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from lightning_modules.cli import main
from tests.factories import TINY_CLI

ROOT = Path(__file__).resolve().parents[1]
PAPER = sorted(p.stem for p in (ROOT / "configs" / "paper").glob("*.yaml"))
SMALL = {"num_proc": 1, "batch_size": 2, "eval_batch_size": 2,
         "max_samples": {"train": 4, "validation": 4, "test": 4, "predict": 2}}


def sample_data(config: dict) -> dict:
    """The config's ``data`` with every source reading its shipped sample, small and single-process."""
    data = json.loads(json.dumps(config["data"]))  # a deep copy
    args = data.setdefault("init_args", {})
    for source in args.get("sources", [data]):
        # a shipped sample is one split: validation (and predict) are held out of it where it has none
        source.setdefault("init_args", {}).update(data_files="sample", num_proc=1, validation_fraction=0.1)
        if source["class_path"].endswith("HHRLHFDataModule"):
            source["init_args"].update(data_dir="helpful-base")
        if source["class_path"].endswith("OASST1DataModule"):
            # the shipped real trees predate OASST's labels (PROVENANCE): scored records need the hand-written
            # labelled tree, one tree, so it stands for both splits (a smoke run, not an evaluation)
            tree = str(ROOT / "datamodules" / "samples" / "oasst1" / "labelled-tree.handwritten.jsonl")
            source["init_args"].update(data_files=dict.fromkeys(("train", "validation", "predict"), tree),
                                       validation_fraction=0.0)
        if source["class_path"].endswith("HelpSteerDataModule"):
            # the hand-written rows answer one prompt twice, so a scored method finds a pair to build
            rows = ROOT / "datamodules" / "samples" / "helpsteer"
            source["init_args"].update(data_files={"train": str(rows / "train.handwritten.jsonl"),
                                                   "validation": str(rows / "card_examples.jsonl"),
                                                   "predict": str(rows / "card_examples.jsonl")},
                                       validation_fraction=0.0)
    args.update(SMALL)
    if "sources" in args:  # a mixture: enough records that each source contributes a prompt with two replies
        args["max_samples"] = {**SMALL["max_samples"], "train": 12, "validation": 12}
    return data


def test_every_paper_config_is_covered():
    assert len(PAPER) >= 11 and {"cmpo_helpsteer_oasst", "steerlm_acm", "meet_hh_prompt"} <= set(PAPER)
    assert {"alt_toxicity", "alt_tldr", "alt_hh", "alt_lmu_tldr", "quark_tldr", "steerlm_hh"} <= set(PAPER)


@contextlib.contextmanager
def alt_offline(config: dict, tmp: Path):
    """CLI overrides that let an ALT paper set-up run offline and small: VADER for hub scorers, a scripted judge."""
    from fastapi import FastAPI, Request

    from zoo.serve import serve_in_thread

    args = config["model"]["init_args"]
    run = ["--model.init_args.scorers", "[sentiment]", "--model.init_args.objective", "{sentiment: 1.0}",
           "--model.init_args.prompts_per_round", "3", "--model.init_args.samples_per_prompt", "4",
           "--model.init_args.round_sampling.max_new_tokens", "6", "--model.init_args.eval_sampling.max_new_tokens", "6",
           "--model.init_args.eval_sampling.n", "2" if args["eval_sampling"].get("temperature", 1.0) > 0 else "1"]
    evaluation = dict(args.get("evaluation") or {})
    if evaluation:  # no hub fluency model; VADER stands in for the toxicity scorer
        evaluation.update(fluency_model=None, toxicity="sentiment" if evaluation.get("toxicity") else None)
        run += ["--model.init_args.evaluation", json.dumps(evaluation)]
    if args.get("records_per_round"):
        run += ["--model.init_args.records_per_round", "8"]
    judge = args.get("feedback", {}).get("judge")
    if judge is None:
        yield run
        return
    app, turn = FastAPI(), {"k": 0}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        text = (await request.json())["messages"][-1]["content"]
        turn["k"] += 1
        if text.rstrip().endswith("Feedback:"):  # Fig. 19: one of the four categories, in turn
            reply = ["Harmless and very helpful", "Harmless and helpful", "Harmless and not helpful", "Harmful"][turn["k"] % 4]
        else:  # Fig. 20
            reply = f"Analysis: fine.\nFeedback: Accurate but short ({turn['k'] % 4}).\nScore: {turn['k'] % 4}."
        return {"id": "x", "object": "chat.completion", "created": 0, "model": judge["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}]}

    with serve_in_thread(app) as url:
        yield [*run, "--model.init_args.feedback.judge", json.dumps({**judge, "base_url": url + "/v1"})]


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_paper_config_runs(tmp_cwd, name):
    path = ROOT / "configs" / "paper" / f"{name}.yaml"
    config = yaml.safe_load(path.read_text())
    override = tmp_cwd / "sample_data.yaml"
    override.write_text(yaml.safe_dump({"data": sample_data(config)}))
    root = tmp_cwd / "run"
    run = ["--config", str(path), "--config", str(override), *TINY_CLI, "--model.init_args.sampling.max_new_tokens", "6",
           "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.default_root_dir", str(root),
           "--trainer.val_check_interval", "null", "--trainer.check_val_every_n_epoch", "1"]
    cls = config["model"]["class_path"]
    with contextlib.ExitStack() as stack:
        if cls.endswith(".ALT"):  # two iterations, so sampling under the exemplar runs too
            run += stack.enter_context(alt_offline(config, tmp_cwd))
            run += ["--trainer.max_steps", "-1", "--trainer.max_epochs", "2", "--model.init_args.epochs_per_round", "1",
                    "--trainer.check_val_every_n_epoch", "1"]
            main(["fit", *run])
            state = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
            assert [r["index"] for r in state["online"]["pool"]["rounds"]][-1] == 1
            labels = config["model"]["init_args"]["feedback"].get("labels")
            steer = ["--steer", json.dumps({labels[-1]: 1.0})] if labels else []
            main(["predict", *run, *steer, "--ckpt_path", str(root / "checkpoints" / "last.ckpt")])
            (out,) = (root / "predictions").glob("predict-*.jsonl")
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            assert 1 <= len(rows) <= 2 and all(r["feedback"] == (labels[-1] if labels else r["feedback"]) for r in rows)
            return
    if cls.endswith("MEET"):
        # one epoch per MEET step (2 batches each), so fit crosses the phase switch; CoH has no step 1
        first = "0" if name.endswith("coh") else "1"
        run += ["--model.init_args.phases.first_epochs", first,
                "--model.init_args.phases.second_epochs", str(2 - int(first)), "--trainer.max_epochs", "2",
                "--trainer.max_steps", "-1"]
    else:
        run += ["--trainer.max_steps", "2", "--trainer.max_epochs", "1"]
    main(["fit", *run])
    last = root / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == (4 if cls.endswith("MEET") else 2)
    if cls.endswith("MEET"):
        assert state["meet"]["phase"] == 2
    if cls.endswith("SteerLMAttributeModel"):  # the APM labels data; it does not generate
        main(["validate", *run, "--ckpt_path", str(last)])
        return
    attrs = config["model"]["init_args"].get("attributes")
    steer = ["--steer", json.dumps({attrs[0]: 1.0})] if cls.endswith(("CMPO", "SteerLMConditionedSFT")) else []
    main(["predict", *run, *steer, "--ckpt_path", str(last)])
    (out,) = (root / "predictions").glob("predict-*.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all("completion" in r for r in rows)
