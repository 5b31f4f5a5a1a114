"""Model parts; importing this package registers every variant."""

from ablate.model import backbone, filter, guide, teacher, weight  # noqa: F401
