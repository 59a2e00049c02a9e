"""One DataModule per dataset: raw hub rows -> canonical records (``zoo.records``)."""

from datamodules.hh_rlhf import HHRLHFDataModule

__all__ = ["HHRLHFDataModule"]
