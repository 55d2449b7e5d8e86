"""The studio's Train section: ``jobs/train.py`` submitted through the Ray Jobs API to the cluster the app runs
on, followed (status, log tail) and stopped there; its loss curve read from its MLflow run.

A job is exactly what a user submits by hand (``ray job submit --working-dir . -- python jobs/train.py ...``):
the same script, the checkout as ``working_dir`` (uploaded by Ray, ``.gitignore`` respected), one worker with
``cpus_per_worker`` CPUs. Its submission id is also its run name (``--name``), which is how its MLflow run
is found. Jobs carry ``metadata={"flowtts": "studio"}``; only those are listed and stopped here.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import time
from pathlib import Path

from flowtts.config import preset_names
from flowtts.usage_reporting import usage_reporting_off
from serve.http_errors import ApiError
from serve.schemas import TrainJobInfo, TrainRequest
from serve.settings import TrainingSettings

STUDIO_METADATA = {"flowtts": "studio"}
TRAIN_SCRIPT = "jobs/train.py"
LOG_TAIL_LINES = 60
JOB_ID_PATTERN = re.compile(r"^studio-[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
SUMMARY_LINE = re.compile(r'^\{"name": .*"model_version": .*\}$', re.M)


def default_working_dir() -> Path:
    """The checkout this code runs from (the folder holding ``serve/`` and ``jobs/``)."""
    return Path(__file__).resolve().parents[1]


def new_job_id() -> str:
    return f"studio-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def train_command(request: TrainRequest, job_id: str, settings: TrainingSettings, registered_model: str) -> list[str]:
    """The ``jobs/train.py`` command line of a studio request (one worker, the settings' CPUs)."""
    if request.preset not in preset_names():
        raise ApiError(
            422,
            "invalid_request",
            f"preset {request.preset!r} is not one of {', '.join(preset_names())}",
            field="preset",
        )
    command = ["python", TRAIN_SCRIPT, "--config", request.preset, "--data", request.data, "--name", job_id]
    command += ["--max-steps", str(request.max_steps), "--checkpoint-every", str(request.max_steps)]
    command += ["--workers", "1", "--cpus-per-worker", str(settings.cpus_per_worker)]
    command += ["--experiment", settings.experiment, "--registered-model", registered_model]
    if settings.storage:
        command += ["--storage", settings.storage]
    if request.init_from:
        command += ["--init-from", request.init_from]
    overrides = dict(request.overrides)
    if request.learning_rate is not None:
        overrides["train.learning_rate"] = request.learning_rate
    for key, value in overrides.items():
        command += ["--set", f"{key}={json.dumps(value) if isinstance(value, bool) else value}"]
    return command


def registered_version(logs: str) -> str | None:
    """The model version in the job's final summary line (``jobs/train.py`` prints one JSON line)."""
    lines = SUMMARY_LINE.findall(logs)
    return str(json.loads(lines[-1])["model_version"]) if lines else None


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


class TrainingJobs:
    """Submit, list, follow and stop studio training jobs (blocking calls: run them in a thread)."""

    def __init__(self, settings: TrainingSettings, tracking_uri: str | None):
        self.settings = settings
        self.tracking_uri = tracking_uri
        self.working_dir = Path(settings.working_dir or default_working_dir())
        self._client = None

    @property
    def client(self):
        """The Jobs API client, made on first use (the dashboard may start after the app)."""
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            try:
                self._client = JobSubmissionClient(self.settings.ray_address or cluster_address())
            except (OSError, RuntimeError, ValueError) as exc:
                raise ApiError(503, "jobs_api_unavailable", f"the Ray Jobs API cannot be reached: {exc}") from exc
        return self._client

    def submit(self, request: TrainRequest, registered_model: str) -> TrainJobInfo:
        if not (self.working_dir / TRAIN_SCRIPT).is_file():
            raise ApiError(
                503,
                "training_unavailable",
                f"{self.working_dir / TRAIN_SCRIPT} does not exist; set training.working_dir to a flowtts checkout",
            )
        job_id = new_job_id()
        command = train_command(request, job_id, self.settings, registered_model)
        env_vars = {**usage_reporting_off(), **self.settings.env_vars}  # flowtts.usage_reporting; settings win
        if self.tracking_uri:
            env_vars.setdefault("MLFLOW_TRACKING_URI", self.tracking_uri)
        runtime_env = {"working_dir": str(self.working_dir), **({"env_vars": env_vars} if env_vars else {})}
        self._ask(
            "submit_job",
            entrypoint=shlex.join(command),
            submission_id=job_id,
            runtime_env=runtime_env,
            metadata=STUDIO_METADATA,
        )
        return self.get(job_id, details=False)

    def list(self) -> list[TrainJobInfo]:
        jobs = [job for job in self._ask("list_jobs") if (job.metadata or {}).get("flowtts") == "studio"]
        jobs.sort(key=lambda job: job.start_time or 0, reverse=True)
        return [self._info(job) for job in jobs]

    def get(self, job_id: str, details: bool = True) -> TrainJobInfo:
        job = self._job(job_id)
        info = self._info(job)
        if not details:
            return info
        logs = self._ask("get_job_logs", job_id)
        return info.model_copy(
            update={"logs": tail(logs), "loss": self.loss_curve(job_id), "model_version": registered_version(logs)}
        )

    def stop(self, job_id: str) -> TrainJobInfo:
        self._job(job_id)
        self._ask("stop_job", job_id)
        return self.get(job_id, details=False)

    def loss_curve(self, run_name: str) -> list[tuple[int, float]]:
        """``(step, loss)`` of the job's MLflow run; empty until the run exists and logs."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name(self.settings.experiment)
        if experiment is None:
            return []
        runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
        if not runs:
            return []
        history = client.get_metric_history(runs[0].info.run_id, "loss")
        return sorted((int(m.step), float(m.value)) for m in history)

    def _ask(self, method: str, *args, **kwargs):
        """A Jobs API call; an unreachable or refusing Jobs API becomes a 503/502 answer that says why."""
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except OSError as exc:  # requests' connection errors too
            raise ApiError(503, "jobs_api_unavailable", f"the Ray Jobs API cannot be reached: {exc}") from exc
        except RuntimeError as exc:  # the SDK's "Request failed with status code ..."
            raise ApiError(502, "jobs_api_error", f"the Ray Jobs API refused {method}: {exc}") from exc

    def _job(self, job_id: str):
        if not JOB_ID_PATTERN.match(job_id):
            raise ApiError(404, "job_not_found", f"training job {job_id!r} not found (ids look like studio-...)")
        try:
            job = self._ask("get_job_info", job_id)
        except ApiError as exc:
            if exc.status == 502 and "404" in exc.message:  # the Jobs API has no job with this id
                raise ApiError(404, "job_not_found", f"training job {job_id!r} not found") from exc
            raise
        if (job.metadata or {}).get("flowtts") != "studio":
            raise ApiError(404, "job_not_found", f"training job {job_id!r} was not submitted by the studio")
        return job

    @staticmethod
    def _info(job) -> TrainJobInfo:
        return TrainJobInfo(
            id=job.submission_id,
            status=job.status.value,
            message=job.message,
            entrypoint=job.entrypoint,
            start_time=job.start_time / 1000 if job.start_time else None,
            end_time=job.end_time / 1000 if job.end_time else None,
        )


def cluster_address() -> str:
    """The GCS address of the cluster this replica runs in; the client asks it where the Jobs API is."""
    import ray

    return ray.get_runtime_context().gcs_address
