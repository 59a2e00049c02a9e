"""Issue 11: the embedded CMPO demo (``configs/cmpo.yaml``, run as a user runs it) visibly steers.

On its held-out prompts, the end-of-fit sweep over ≥ 5 weight vectors from (verbosity 1, sentiment 0) to
(0, 1) must move each attribute with its own head's weight (Spearman ρ ≥ 0.9) and end beyond the 95%
bootstrap interval. The same check, on the same trained model, must fail when the two heads are swapped or
when generation ignores the weights, so a pass cannot come from the check itself.
"""

import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from callbacks.steering import SteeringSweep
from lightning_modules.cli import main

# behaviour: on the committed recipe verbosity steers (ρ 1.0, ends beyond the interval) but sentiment does not
# (ρ −0.2): this fails today (docs/methods/cmpo.md "Measured"); CI leaves it out until the recipe steers both
pytestmark = [pytest.mark.slow, pytest.mark.behaviour]
ROOT = Path(__file__).resolve().parents[1]
ATTRS = ("verbosity", "sentiment")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmpo_demo")
    start = time.perf_counter()
    cli = main(["fit", "--config", str(ROOT / "configs" / "cmpo.yaml"), "--trainer.default_root_dir", str(root),
                "--trainer.enable_progress_bar", "false"])
    print(f"\nconfigs/cmpo.yaml fit (with its sweep and summary): {time.perf_counter() - start:.0f} s wall")
    (sweep,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, SteeringSweep)]
    return cli.trainer, cli.model, sweep, root


def test_embedded_cmpo_demo_steers_beyond_noise(demo):
    _, _, sweep, _ = demo
    result = sweep.result
    assert result is not None and len(result.grid) >= 5 and result.scores["verbosity"].shape[1] >= 16
    for attr in ATTRS:
        assert result.follows_weight(attr), f"{attr} does not follow its weight:\n{result.table()}"


@contextmanager
def swapped_heads(module):
    with torch.no_grad():
        module.heads.weight.copy_(module.heads.weight.flip(0))
    try:
        yield
    finally:
        with torch.no_grad():
            module.heads.weight.copy_(module.heads.weight.flip(0))


@contextmanager
def ignored_weights(module, monkeypatch):
    default = module.default_preference()  # every grid point generates under the uniform mix
    original = module.apply_preference
    monkeypatch.setattr(module, "apply_preference", lambda pref: original(default))
    yield


@pytest.mark.parametrize("broken", ["swapped_heads", "ignored_weights"])
def test_the_steering_check_fails_on_a_broken_model(demo, broken, monkeypatch, tmp_path):
    trainer, module, sweep, _ = demo
    assert module.head_init == "copy"  # swapping flips the stacked copies
    again = SteeringSweep(scorers=list(ATTRS), points=len(sweep.result.grid), num_prompts=sweep.num_prompts,
                          out_dir=str(tmp_path))
    with swapped_heads(module) if broken == "swapped_heads" else ignored_weights(module, monkeypatch):
        again.on_fit_end(trainer, module)
    for attr in ATTRS:
        assert not again.result.follows_weight(attr), f"{broken}: {attr} passed:\n{again.result.table()}"
