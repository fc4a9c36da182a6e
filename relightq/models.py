"""Every model, imported in one place so Alembic and create_all see the whole schema."""

from relightq.db import Base
from relightq.jobs.models import Job, JobAttempt, JobOutput, UpstreamState
from relightq.tenants.models import ApiKey, Tenant

__all__ = ["ApiKey", "Base", "Job", "JobAttempt", "JobOutput", "Tenant", "UpstreamState"]
