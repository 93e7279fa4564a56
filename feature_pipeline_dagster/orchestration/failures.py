"""The core's one-line faults as Dagster failures."""

from contextlib import contextmanager

from dagster import Backoff, DagsterExecutionInterruptedError, Failure, RetryPolicy

from feature_pipeline_dagster.core.errors import PipelineError

RETRY_POLICY = RetryPolicy(max_retries=3, delay=2.0, backoff=Backoff.EXPONENTIAL)


def as_failure(err: PipelineError, **metadata) -> Failure:
    """One clear line in the UI; retried only when trying again could help."""
    return Failure(description=str(err), allow_retries=err.retryable, metadata={"error": str(err), **metadata})


@contextmanager
def interrupts_not_retried():
    """An interrupt (the UI's Terminate, Ctrl-C on `dagster asset materialize`) fails the step
    instead of retrying it: Dagster answers an interrupt in a step that has a RetryPolicy with
    a retry, so a terminated run embedded its videos again from the start and succeeded. A
    failed step of a run being terminated ends the run CANCELED; what was committed stays."""
    try:
        yield
    except (KeyboardInterrupt, DagsterExecutionInterruptedError) as interrupt:
        raise Failure(description="interrupted (the run was terminated, or Ctrl-C)", allow_retries=False) from interrupt
