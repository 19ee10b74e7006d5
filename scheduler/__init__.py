"""Periodic and long-running background work, with the work functions injected by the caller.

This package never imports the HTTP layer or the services: ``connector.runtime`` hands it plain
async callables, so the scheduler stays small enough to read in one sitting.
"""

from scheduler.runner import JobScheduler, JobStatus

__all__ = ["JobScheduler", "JobStatus"]
