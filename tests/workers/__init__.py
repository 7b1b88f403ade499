"""Child-process programs for the concurrency, crash and fault tests."""
