"""The task engine: one set of idempotent task functions, two ways to run them.

- ``runner``: claims a task row and runs its handler, with heartbeats, retries and
  exponential backoff. Both executors call it.
- ``embedded``: a thread pool in this process (the default).
- ``celery_app``: Celery with one queue per site, for the distributed mode.
"""
