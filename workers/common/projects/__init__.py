"""The project store: organizations, projects and their slugs (docs/reference.md, Projects)."""

from workers.common.projects.slugs import (
    RESERVED_PROJECT_SLUGS,
    SlugUnavailableError,
    candidate_slugs,
    choose_slug,
    is_valid_slug,
    slugify,
)
from workers.common.projects.store import (
    HAS_CUSTOM_METRICS_FLAG,
    Organization,
    Project,
    ProjectStoreError,
    create_organization,
    create_project,
    find_organization,
    list_projects,
)

__all__ = [
    "HAS_CUSTOM_METRICS_FLAG",
    "RESERVED_PROJECT_SLUGS",
    "Organization",
    "Project",
    "ProjectStoreError",
    "SlugUnavailableError",
    "candidate_slugs",
    "choose_slug",
    "create_organization",
    "create_project",
    "find_organization",
    "is_valid_slug",
    "list_projects",
    "slugify",
]
