"""Data layer: the record type, readers for every source format, splits, prompts and the DataModule."""

from mre.data.record import DataFormatError, Record, RowIssues, WLIPair

__all__ = ["DataFormatError", "Record", "RowIssues", "WLIPair"]
