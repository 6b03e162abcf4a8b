"""Where datasets, checkpoints and models live under UNFREEZE_STORAGE."""

from pathlib import Path

from models.settings import get_settings


def dataset_dir(dataset_id: str) -> Path:
    """The extracted dataset: `<split>/<class>/...` and `manifest.json`."""
    return get_settings().storage_dir / "datasets" / dataset_id / "data"


def job_dir(job_id: str) -> Path:
    return get_settings().storage_dir / "jobs" / job_id


def model_path(job_id: str) -> Path:
    return job_dir(job_id) / "model.safetensors"


def checkpoint_path(job_id: str) -> Path:
    return job_dir(job_id) / "checkpoint.pt"
