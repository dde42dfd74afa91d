"""jobs-cli: record ETL job runs in PostgreSQL so shell-scripted ETL can load incrementally."""

__all__ = ["Job"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so that `jobs-cli --help` does not load the library layer.
    if name == "Job":
        from .api import Job

        return Job
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
