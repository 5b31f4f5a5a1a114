"""Model parts; importing this package registers every variant."""

from ablate.model import backbone, encoders, filter, guide, teachers, weight  # noqa: F401
