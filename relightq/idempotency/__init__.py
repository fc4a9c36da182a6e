"""Idempotency-Key: the first answer to a key is the answer to every retry of it."""
