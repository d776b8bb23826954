"""File readers, chosen by file type (numpy; Pillow, pydicom, nibabel and wfdb imported when a
file of theirs is read). ``base`` has the registries, Pillow images and ``.npy``; ``medical``
registers DICOM, NIfTI, WFDB and CSV signals."""

from medfuse.core.readers import medical as _medical  # noqa: F401  (registers its readers)
from medfuse.core.readers.base import (
    COMPANION_FILES,
    IMAGE_READERS,
    SIGNAL_READERS,
    apply_window,
    aspect_range,
    files_read,
    image_aspect,
    numeric_window,
    raw_extent,
    read_fitted,
    read_image,
    read_modality,
    read_signal,
    suffix_of,
)
from medfuse.core.readers.image_math import fit_image

__all__ = [
    "COMPANION_FILES",
    "IMAGE_READERS",
    "SIGNAL_READERS",
    "apply_window",
    "aspect_range",
    "files_read",
    "fit_image",
    "image_aspect",
    "numeric_window",
    "raw_extent",
    "read_fitted",
    "read_image",
    "read_modality",
    "read_signal",
    "suffix_of",
]
