# Production image: the API (default CMD), the Celery worker and the migrations all run from it
# (see docker-compose.yml). The worker needs an NVIDIA GPU; the torch wheels bundle CUDA.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch/torchvision are pinned and installed with pip first, in their own layer (several GB):
# code changes do not invalidate it.
RUN pip install torch==2.14.1 torchvision==0.29.1

# Non-root user; /data is the storage volume (datasets, jobs, TORCH_HOME cache). A named volume
# mounted there on first use takes this folder's ownership.
RUN useradd --create-home --uid 1000 unfreeze \
    && mkdir -p /data/torch \
    && chown -R unfreeze:unfreeze /data

WORKDIR /app

COPY pyproject.toml alembic.ini ./
COPY api/ api/
COPY worker/ worker/
COPY models/ models/
COPY migrations/ migrations/
COPY scripts/ scripts/

RUN pip install '.[worker]' \
    && rm -rf build *.egg-info

ENV UNFREEZE_STORAGE=/data \
    TORCH_HOME=/data/torch \
    PORT=8000

USER unfreeze

EXPOSE 8000

CMD ["uvicorn", "api.app:app", "--host", "0.0.0.0", "--port", "8000"]
