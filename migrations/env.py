"""Alembic environment: migrates the database that DATABASE_URL (or the embedded default) names."""

from alembic import context

from models.db import get_engine
from models.settings import get_settings
from models.tables import Base

settings = get_settings()
if settings.db_url.startswith("sqlite"):
    settings.var_dir.mkdir(parents=True, exist_ok=True)

with get_engine().connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
