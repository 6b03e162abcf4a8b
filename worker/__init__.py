"""The worker: a Celery adapter (`worker.celery`, `worker.tasks`) around the pure-PyTorch engine (`worker.engine`)."""
