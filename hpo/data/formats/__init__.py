"""Data formats, one registry entry each (``data.format`` in the study file): the registry and
its entries, which register themselves on import."""

from hpo.data.formats import files, mask  # noqa: F401 - registers their formats
from hpo.data.formats.registry import FORMATS, load_table
from hpo.data.images import IMAGE_EXTENSIONS, read_rgb, to_rgb8

__all__ = ["FORMATS", "IMAGE_EXTENSIONS", "load_table", "read_rgb", "to_rgb8"]
