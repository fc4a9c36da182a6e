"""Schedules: cron-timed re-runs of batches, prefixes and failed jobs, with history."""
