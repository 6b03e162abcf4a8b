"""The HTTP API (FastAPI). Never imports torch: it validates, stores and enqueues by task name."""
