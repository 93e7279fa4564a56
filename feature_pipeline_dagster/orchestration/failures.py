"""The core's one-line faults as Dagster failures."""

from dagster import Backoff, Failure, RetryPolicy

from feature_pipeline_dagster.core.errors import PipelineError

RETRY_POLICY = RetryPolicy(max_retries=3, delay=2.0, backoff=Backoff.EXPONENTIAL)


def as_failure(err: PipelineError, **metadata) -> Failure:
    """One clear line in the UI; retried only when trying again could help."""
    return Failure(description=str(err), allow_retries=err.retryable, metadata={"error": str(err), **metadata})
