"""jobs-cli: record ETL job runs in PostgreSQL so shell-scripted ETL can load incrementally."""

from .api import Job

__all__ = ["Job"]
__version__ = "0.1.0"
