"""Charter: an ownership-driven integration and orchestration hub for business systems."""

__version__ = "0.1.0"
