"""How every job entry point (``jobs/*.py``) ends on a project error: one line ``error: <message>`` on stderr
and exit status 2 instead of a traceback, also when the error was raised in a Ray task, an actor or a Ray
Train worker and reaches the driver wrapped in Ray's own exception types."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from ray.exceptions import RayTaskError
from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

PROJECT_PACKAGES = ("flowtts", "data_pipelines", "trainer", "serve")
ERROR_STATUS = 2


def project_error(exc: BaseException) -> BaseException | None:
    """The first exception of ours in ``exc``, in what Ray wrapped around it, or in its causes; else None."""
    pending, seen = [exc], set()
    while pending:
        error = pending.pop(0)
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, RayTaskError):  # a task or actor failed: ``cause`` is what it raised
            pending.append(error.cause)
        elif isinstance(error, WorkerGroupError):  # Ray Train: what each failed worker raised
            pending.extend(error.worker_failures.values())
        elif isinstance(error, ControllerError):
            pending.append(error.controller_failure)
        elif type(error).__module__.split(".")[0] in PROJECT_PACKAGES:
            return error
        pending += [error.__cause__, error.__context__]
    return None


def exit_on_project_error(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a job's ``main``: a project error (however Ray wrapped it) prints ``error: <message>`` and returns
    status 2; any other exception propagates with its traceback."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except Exception as exc:
            error = project_error(exc)
            if error is None:
                raise
            print(f"error: {error}", file=sys.stderr, flush=True)
            return ERROR_STATUS

    return run
