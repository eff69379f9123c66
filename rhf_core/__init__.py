"""Rich Human Feedback Studio: the library behind the app (never imports streamlit)."""

from rhf_core.errors import (
    DatasetFormatError,
    DatasetNotFoundError,
    DatasetSpecError,
    ImageLoadError,
    RecordNotFoundError,
    RHFError,
)

__all__ = [
    "RHFError",
    "DatasetSpecError",
    "DatasetNotFoundError",
    "DatasetFormatError",
    "RecordNotFoundError",
    "ImageLoadError",
]
