"""What the driver hands to Ray's workers."""

from __future__ import annotations

import json

from emm_ray.runtime import JOB_CONFIG_VARIABLE, RAY_ENV, worker_env


def test_workers_get_where_things_are_but_no_secret() -> None:
    environ = {
        **RAY_ENV,
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "AWS_ENDPOINT_URL": "http://s3:9000",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "MLFLOW_TRACKING_PASSWORD": "password",
        "EMM_NODE_CACHE": "/driver/only",
        "HOME": "/root",
    }
    sent = worker_env(environ)
    assert sent == {
        **RAY_ENV,
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "AWS_ENDPOINT_URL": "http://s3:9000",
    }


def test_a_submitted_jobs_own_variables_are_not_sent_again() -> None:
    job = {"runtime_env": {"env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}}}
    environ = {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "AWS_ENDPOINT_URL": "http://s3:9000",
        JOB_CONFIG_VARIABLE: json.dumps(job),
    }
    assert worker_env(environ) == {"AWS_ENDPOINT_URL": "http://s3:9000"}
