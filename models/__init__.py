"""What the API and the worker share: settings, tables, the job spec, the catalogue, job transitions."""
