"""One DataModule per dataset: raw hub rows -> canonical records (``zoo.records``)."""

from datamodules.beavertails import BeaverTailsDataModule
from datamodules.helpsteer import HelpSteerDataModule
from datamodules.hh_rlhf import HHRLHFDataModule
from datamodules.mixture import MixtureDataModule
from datamodules.oasst import OASST1DataModule
from datamodules.personalized_soups import PersonalizedSoupsDataModule
from datamodules.pku_saferlhf import PKUSafeRLHFDataModule
from datamodules.real_toxicity import RealToxicityPromptsDataModule
from datamodules.records_file import RecordsFileDataModule
from datamodules.tldr import TLDRDataModule
from datamodules.ultrafeedback import UltraFeedbackDataModule

__all__ = [
    "BeaverTailsDataModule",
    "HHRLHFDataModule",
    "HelpSteerDataModule",
    "MixtureDataModule",
    "OASST1DataModule",
    "PKUSafeRLHFDataModule",
    "PersonalizedSoupsDataModule",
    "RealToxicityPromptsDataModule",
    "RecordsFileDataModule",
    "TLDRDataModule",
    "UltraFeedbackDataModule",
]
