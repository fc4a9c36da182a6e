"""Celery delivery layer: maps broker messages onto relightq's services."""
