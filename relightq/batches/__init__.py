"""Batches: many relight jobs sharing defaults, from JSON, CSV, JSONL or an S3 prefix."""
