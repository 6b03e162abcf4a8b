"""The training engine: plain PyTorch and torchvision, no Celery, database or web server."""
