"""What operators look at: the audit log, status, the task queue."""
