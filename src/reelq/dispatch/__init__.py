"""Getting work to the workers: the supervisor and sweeper, doorbells, Celery publishing, GPUs, probes."""
