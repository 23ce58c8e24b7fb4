"""Data stage: read folders, arrays and manifests into :class:`ImageSet` objects."""

from privaudit.data.imageset import ImageSet, InputSummary, SkippedFile
from privaudit.data.loaders import DEFAULT_MAX_SKIPPED, load_imageset

__all__ = ["DEFAULT_MAX_SKIPPED", "ImageSet", "InputSummary", "SkippedFile", "load_imageset"]
