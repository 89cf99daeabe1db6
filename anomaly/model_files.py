"""Where a trained model lives (`anomaly.model_store` writes and reads it): the names
alone, so the hub can tell whether there is one without importing numpy, which only a
trained model needs."""

from __future__ import annotations

from pathlib import Path
from typing import Final

META_NAME: Final = "anomaly-model.json"
ARRAYS_NAME: Final = "anomaly-model.npz"


def has_model(directory: Path) -> bool:
    """Both files of a saved model are in `directory` (whether they fit: `load_model`)."""
    return (directory / META_NAME).exists() and (directory / ARRAYS_NAME).exists()
