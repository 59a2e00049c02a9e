"""The run summary: "before" is measured at step 0 (not assumed), intervals come from per-example values, and the
report names every output and the command that uses the result."""

import numpy as np
import pytest
import torch

from callbacks.artifacts import SavePretrained
from callbacks.checkpoint_io import LastCheckpoint
from callbacks.summary import RunSummary, mean_ci, metric_rows
from lightning_modules import DPO, SFT
from tests.factories import hh_sample, tiny_kwargs, trainer
from zoo.metrics import pairwise_accuracy


def test_pairwise_accuracy_counts_ties_half():
    acc = pairwise_accuracy(torch.tensor([1.0, 0.0, 2.0, 5.0]), torch.tensor([0.0, 1.0, 2.0, 5.00001]))
    assert acc.tolist() == [1.0, 0.0, 0.5, 0.5]


def test_metric_rows_report_the_paired_change_and_whether_it_is_beyond_noise():
    before = {"m": np.zeros(20), "n": np.zeros(20)}
    after = {"m": np.linspace(1, 2, 20), "n": np.array([0.1, -0.1] * 10)}
    rows = metric_rows(before, after)
    assert "(beyond noise)" in rows[0] and "change +1.500" in rows[0]
    assert "(within noise)" in rows[1]
    mean, lo, hi, n = mean_ci(np.array([1.0, np.nan, 3.0]))
    assert (mean, n) == (2.0, 2) and lo <= mean <= hi


def test_dpo_summary_measures_before_at_step_zero_and_names_outputs(tmp_cwd, capsys):
    summary = RunSummary()
    last = LastCheckpoint(dirpath=str(tmp_cwd / "ckpt"), save_last=True, save_top_k=0)
    module = DPO(**tiny_kwargs(), ref_cache_dir=None)
    dm = hh_sample(train=16, validation=8)
    trainer(tmp_cwd, max_steps=4, callbacks=[last, SavePretrained(), summary], limit_val_batches=None).fit(
        module, datamodule=dm)
    # the untrained policy is its own reference: every implicit reward is 0, a tie
    assert summary.before_step == 0
    np.testing.assert_array_equal(summary.before["reward_accuracy"], np.full(8, 0.5))
    np.testing.assert_array_equal(summary.before["reward_margin"], np.zeros(8))
    assert np.abs(summary.after["reward_margin"]).max() > 0  # training moved the held-out rewards
    text = capsys.readouterr().out
    assert "DPO run summary" in text and "reward_accuracy  0.500 [0.500, 0.500]  →" in text
    assert "optimizer steps" in text and "of 107,328 parameters trainable" in text
    assert str(tmp_cwd / "ckpt" / "last.ckpt") in text and "hf/ (save_pretrained)" in text
    assert f"--ckpt_path {tmp_cwd / 'ckpt' / 'last.ckpt'}" in text and "--steer" not in text  # DPO is not steerable


@pytest.mark.parametrize("cls", [SFT])
def test_sft_summary_reports_held_out_nll(tmp_cwd, cls):
    summary = RunSummary()
    module = cls(**tiny_kwargs())
    trainer(tmp_cwd, max_steps=3, callbacks=[summary], limit_val_batches=None).fit(
        module, datamodule=hh_sample(train=12, validation=6))
    assert set(summary.after) == {"nll_per_token"} and len(summary.after["nll_per_token"]) == 6
    assert summary.after["nll_per_token"].mean() < summary.before["nll_per_token"].mean()  # lr 1e-3 on 12 rows
