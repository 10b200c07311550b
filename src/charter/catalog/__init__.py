"""The catalog: a project folder of YAML, loaded into typed, cross-checked models."""

from charter.catalog.loader import PROJECT_FILE, Project, load_project
from charter.catalog.model import (
    Domain,
    Entity,
    Integration,
    RetryPolicy,
    Slo,
    System,
    Team,
    Tier,
    Timeliness,
)

__all__ = [
    "PROJECT_FILE",
    "Domain",
    "Entity",
    "Integration",
    "Project",
    "RetryPolicy",
    "Slo",
    "System",
    "Team",
    "Tier",
    "Timeliness",
    "load_project",
]
