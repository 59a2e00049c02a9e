"""One LightningModule per method; ``train.py`` finds them here by class name."""

from lightning_modules.cmpo import CMPO
from lightning_modules.dpo import DPO
from lightning_modules.reward_model import RewardModel
from lightning_modules.sft import SFT
from lightning_modules.steerlm import SteerLMAttributeModel, SteerLMConditionedSFT

__all__ = ["CMPO", "DPO", "SFT", "RewardModel", "SteerLMAttributeModel", "SteerLMConditionedSFT"]
