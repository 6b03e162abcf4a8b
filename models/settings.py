"""Service configuration, read once from the environment."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Environment variables of the service; unset servers fall back to an embedded default under `var_dir`."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    database_url: str | None = Field(None, alias="DATABASE_URL")
    celery_broker_url: str | None = Field(None, alias="CELERY_BROKER_URL")
    storage: Path | None = Field(None, alias="UNFREEZE_STORAGE")
    var_dir: Path = Field(Path("var"), alias="UNFREEZE_VAR")
    port: int = Field(8000, alias="PORT")
    queue: str = Field("unfreeze", alias="UNFREEZE_QUEUE")
    max_upload_bytes: int = Field(2 * 1024**3, alias="UNFREEZE_MAX_UPLOAD_BYTES", gt=0)
    max_archive_members: int = Field(200_000, alias="UNFREEZE_MAX_ARCHIVE_MEMBERS", gt=0)
    max_extracted_bytes: int = Field(20 * 1024**3, alias="UNFREEZE_MAX_EXTRACTED_BYTES", gt=0)
    max_compression_ratio: int = Field(200, alias="UNFREEZE_MAX_COMPRESSION_RATIO", gt=0)
    max_image_pixels: int = Field(89_478_485, alias="UNFREEZE_MAX_IMAGE_PIXELS", gt=0)
    allow_downloads: bool = Field(False, alias="UNFREEZE_ALLOW_DOWNLOADS")
    auth: bool = Field(True, alias="UNFREEZE_AUTH", description="'off' serves everyone as the local tenant.")
    rate_limit_per_minute: int = Field(120, alias="UNFREEZE_RATE_LIMIT_PER_MINUTE", ge=0,
                                       description="Write requests per API key per minute; 0 disables.")
    lease_seconds: int = Field(60, alias="UNFREEZE_LEASE_SECONDS", gt=0)
    reaper_interval_seconds: int = Field(15, alias="UNFREEZE_REAPER_INTERVAL_SECONDS", gt=0)
    max_attempts: int = Field(3, alias="UNFREEZE_MAX_ATTEMPTS", gt=0)
    loader_workers: int = Field(0, alias="UNFREEZE_LOADER_WORKERS", ge=0)

    @property
    def db_url(self) -> str:
        if not self.database_url:
            return f"sqlite:///{(self.var_dir / 'unfreeze.db').resolve()}"
        # A plain postgresql:// URL means psycopg 3 here, not SQLAlchemy's psycopg2 default.
        for prefix in ("postgresql://", "postgres://"):
            if self.database_url.startswith(prefix):
                return "postgresql+psycopg://" + self.database_url[len(prefix):]
        return self.database_url

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        """Message folder of the embedded (filesystem) broker."""
        return (self.var_dir / "broker").resolve()

    @property
    def storage_dir(self) -> Path:
        return (self.storage or self.var_dir / "storage").resolve()

    @property
    def embedded(self) -> bool:
        return not self.database_url or not self.celery_broker_url


@lru_cache
def get_settings() -> Settings:
    return Settings()
