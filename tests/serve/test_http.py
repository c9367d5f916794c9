"""Serve over real HTTP: the shipped YAML run with `serve run`, a registered model, raw records.

One model is registered in a temporary MLflow store; `serve run` (a second driver on the
session cluster) runs serve_configs/census.yaml with its args pointed at that model, plus
a second application in `reject` mode for unknown categories. Every test talks to it
with urllib, as a client would.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import strategies as st

from emm_ray.data.schema import FeatureSchema
from emm_ray.runtime import RAY_ENV
from emm_ray.serve.settings import ServeSettings
from emm_ray.tracking.artifacts import ArtifactIntegrityError
from tests.ray_processes import processes_titled
from tests.serve.models import (
    SCHEMA,
    RegisteredModel,
    expected_probabilities,
    raw_rows,
    register_member_version,
    register_tiny_models,
)

REPO = Path(__file__).resolve().parents[2]
SERVE_CONFIG = REPO / "serve_configs" / "census.yaml"
MAX_RECORDS = 8

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


@dataclass(frozen=True)
class Service:
    url: str
    strict_url: str
    model: RegisteredModel
    member: RegisteredModel


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(url: str, body: bytes | None = None, timeout_s: float = 60) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"} if body else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _post(url: str, payload: Any) -> tuple[int, Any]:
    return _request(url, json.dumps(payload).encode())


def _serve_yaml(model_uri: str, tracking_uri: str, port: int) -> dict[str, Any]:
    """The shipped config with its args pointed at the test model, plus a strict twin."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"].update(
        model_uri=model_uri, tracking_uri=tracking_uri, max_records_per_request=MAX_RECORDS
    )
    for deployment in app["deployments"]:
        deployment["ray_actor_options"]["num_cpus"] = 0.25
        deployment["autoscaling_config"]["max_replicas"] = 1
    strict = json.loads(json.dumps(app))
    strict.update(name="emm-strict", route_prefix="/strict")
    strict["args"]["unknown_category"] = "reject"
    config["applications"].append(strict)
    return config


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve run exited with {process.returncode}")
        try:
            if _request(url + "/healthz", timeout_s=5)[0] == 200:
                return
        except (OSError, json.JSONDecodeError):  # not listening yet, or still starting
            pass
        time.sleep(1)
    raise TimeoutError(f"{url}/healthz not ready after {timeout_s} s")


@pytest.fixture(scope="module")
def service(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    import ray
    from ray import serve

    tmp = tmp_path_factory.mktemp("serve")
    model, member = register_tiny_models(tmp)
    port = _free_port()
    config_path = tmp / "serve.yaml"
    config_path.write_text(yaml.safe_dump(_serve_yaml(model.uri, model.tracking_uri, port)))
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, **RAY_ENV}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp / "serve-run.log").open("wb")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("serve")),
            "run",
            str(config_path),
            "--address",
            address,
        ],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, timeout_s=180)
        _wait_healthy(url + "/strict", process, timeout_s=30)
        yield Service(url, url + "/strict", model, member)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        serve.shutdown()
        log.close()


def test_health_reports_the_registered_version(service: Service) -> None:
    status, body = _request(service.url + "/healthz")
    assert status == 200
    assert body["status"] == "ok"
    assert body["model"]["name"] == service.model.name
    assert body["model"]["version"] == service.model.version
    assert body["model"]["schema_hash"] == service.model.schema.hash
    assert body["model"]["kind"] == "fused"
    assert body["model"]["tasks"] == ["income", "never_married"]


def test_openapi_documents_predict_with_every_feature(service: Service) -> None:
    status, spec = _request(service.url + "/openapi.json")
    assert status == 200
    assert "/predict" in spec["paths"]
    record = next(s for n, s in spec["components"]["schemas"].items() if n.endswith("Record"))
    features = service.model.schema.sparse_names + service.model.schema.dense_names
    assert sorted(record["properties"]) == sorted(features)
    assert sorted(record["required"]) == sorted(features)


def test_probabilities_equal_the_models_own_predictions(service: Service) -> None:
    rows = raw_rows(service.model.schema, count=MAX_RECORDS, seed=1)
    status, body = _post(service.url + "/predict", {"records": rows})
    assert status == 200, body
    tasks = service.model.tasks
    served = np.array([[p[t] for t in tasks] for p in body["predictions"]])
    np.testing.assert_allclose(
        served, expected_probabilities(service.model, rows), atol=1e-6, rtol=0
    )
    assert body["warnings"] == []
    assert body["model"]["version"] == service.model.version


def test_mlflow_pyfunc_answers_what_serve_answers(service: Service) -> None:
    """The same registered version through `mlflow.pyfunc.load_model` and `/predict`."""
    from tests.serve.test_pyfunc import as_frame, load

    rows = raw_rows(service.model.schema, count=6, seed=21)
    status, body = _post(service.url + "/predict", {"records": rows})
    assert status == 200, body
    served = np.array([[p[t] for t in service.model.tasks] for p in body["predictions"]])
    pyfunc = load(service.model.uri, service.model.tracking_uri)
    answer = pyfunc.predict(as_frame(rows))[list(service.model.tasks)].to_numpy()
    np.testing.assert_allclose(answer, served, atol=1e-6, rtol=0)


def test_batch_scoring_answers_what_serve_answers(service: Service, tmp_path: Path) -> None:
    """`pipelines/score.py`'s scorer and `/predict`, same version, same records."""
    import pyarrow.parquet as pq

    from emm_ray.serve.batch import ScoreJob, score_table
    from tests.serve.test_batch_scoring import raw_table

    rows = raw_rows(service.model.schema, count=MAX_RECORDS, seed=22)
    pq.write_table(raw_table(rows), tmp_path / "rows.parquet")
    status, body = _post(service.url + "/predict", {"records": rows})
    assert status == 200, body
    served = np.array([[p[t] for t in service.model.tasks] for p in body["predictions"]])
    job = ScoreJob(
        model_uri=service.model.uri,
        tracking_uri=service.model.tracking_uri,
        input_path=str(tmp_path / "rows.parquet"),
        output_dir=str(tmp_path / "scores"),
        cpus_per_actor=0.5,
    )
    score_table(job)
    scored = pq.read_table(tmp_path / "scores").sort_by("row_id")
    batch = np.stack([scored.column(t).to_numpy() for t in service.model.tasks], axis=1)
    np.testing.assert_allclose(batch, served, atol=1e-6, rtol=0)


def test_concurrent_requests_are_batched_without_mixing_rows(service: Service) -> None:
    from concurrent.futures import ThreadPoolExecutor

    requests = [raw_rows(service.model.schema, count=1 + i % 3, seed=10 + i) for i in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(
            pool.map(lambda r: _post(service.url + "/predict", {"records": r}), requests)
        )
    for rows, (status, body) in zip(requests, answers, strict=True):
        assert status == 200, body
        served = np.array([[p[t] for t in service.model.tasks] for p in body["predictions"]])
        np.testing.assert_allclose(
            served, expected_probabilities(service.model, rows), atol=1e-6, rtol=0
        )


def test_unknown_category_is_scored_as_oov_and_reported(service: Service) -> None:
    rows = raw_rows(service.model.schema, count=2, seed=2)
    field = service.model.schema.sparse[0].name
    rows[1][field] = "a category nobody has seen"
    status, body = _post(service.url + "/predict", {"records": rows})
    assert status == 200, body
    assert body["warnings"] == [
        {
            "record": 1,
            "field": field,
            "value": "a category nobody has seen",
            "message": "unseen category, scored with the out-of-vocabulary embedding",
        }
    ]
    served = np.array([[p[t] for t in service.model.tasks] for p in body["predictions"]])
    np.testing.assert_allclose(
        served, expected_probabilities(service.model, rows), atol=1e-6, rtol=0
    )


def test_unknown_category_is_rejected_in_reject_mode(service: Service) -> None:
    rows = raw_rows(service.model.schema, count=3, seed=3)
    field = service.model.schema.sparse[1].name
    rows[2][field] = "never seen"
    status, body = _post(service.strict_url + "/predict", {"records": rows})
    assert status == 422
    assert f"records[2].{field}" in body["message"]
    assert "never seen" in body["message"]
    assert body["detail"][0]["record"] == 2 and body["detail"][0]["field"] == field


def _bad_requests(model: RegisteredModel) -> list[tuple[str, bytes, str]]:
    """(case, raw body, text the message must contain) for every kind of bad input."""
    schema = model.schema
    dense, sparse = schema.dense[0].name, schema.sparse[0].name

    def body(mutate: Any) -> bytes:
        rows = raw_rows(schema, count=3, seed=4)
        mutate(rows)
        return json.dumps({"records": rows}).encode()

    return [
        ("malformed json", b'{"records": [{"age": 3', "JSON decode error"),
        ("not an object", b"[1, 2]", "request body"),
        ("records missing", b"{}", "records"),
        ("missing feature", body(lambda r: r[1].pop(dense)), f"records[1].{dense}: Field required"),
        ("string for dense", body(lambda r: r[2].update({dense: "39"})), f"records[2].{dense}"),
        ("bool for dense", body(lambda r: r[0].update({dense: True})), f"records[0].{dense}"),
        ("null for dense", body(lambda r: r[0].update({dense: None})), f"records[0].{dense}"),
        ("float for category", body(lambda r: r[1].update({sparse: 1.5})), f"records[1].{sparse}"),
        ("list for category", body(lambda r: r[1].update({sparse: ["a"]})), f"records[1].{sparse}"),
        ("NaN", body(lambda r: r[2].update({dense: math.nan})), f"records[2].{dense}"),
        ("Infinity", body(lambda r: r[0].update({dense: math.inf})), f"records[0].{dense}"),
        (
            "overflow to inf",
            body(lambda r: r[0].update({dense: 1e308})).replace(b"1e+308", b"1e999"),
            f"records[0].{dense}",
        ),
        (
            "beyond float32 once scaled",
            body(lambda r: r[1].update({dense: 1e300})),
            f"records[1].{dense}: 1e+300 is beyond the range",
        ),
        ("record not an object", json.dumps({"records": [1]}).encode(), "records[0]"),
        (
            "empty batch",
            json.dumps({"records": []}).encode(),
            "records: List should have at least 1",
        ),
        (
            "oversized batch",
            json.dumps({"records": raw_rows(schema, MAX_RECORDS + 1, seed=5)}).encode(),
            f"limit of {MAX_RECORDS}",
        ),
        ("unknown top-level key", json.dumps({"records": [], "recordz": 1}).encode(), "recordz"),
    ]


def test_every_bad_input_is_a_422_naming_the_field(service: Service) -> None:
    failures = []
    for case, payload, expected in _bad_requests(service.model):
        status, body = _request(service.url + "/predict", payload)
        if status != 422 or expected not in body.get("message", ""):
            failures.append(f"{case}: {status} {body}")
    assert not failures, "\n".join(failures)
    status, body = _post(service.url + "/predict", {"records": raw_rows(service.model.schema, 2)})
    assert status == 200, f"the replica stopped answering after bad input: {body}"


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversized_body_is_a_413_before_it_is_parsed(service: Service, chunked: bool) -> None:
    """Declared (Content-Length) or streamed (chunked), a body over `max_request_bytes`
    is refused with the limit named, and the replica answers the next request."""
    import http.client
    from urllib.parse import urlparse

    limit = ServeSettings.model_fields["max_request_bytes"].default
    payload = b'{"records": [' + b" " * limit + b"]}"
    address = urlparse(service.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if chunked:
        chunks = (payload[i : i + 65536] for i in range(0, len(payload), 65536))
        connection.request("POST", "/predict", chunks, headers, encode_chunked=True)
    else:
        connection.request("POST", "/predict", payload, headers)
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 413, body
    assert f"the limit is {limit}" in body["message"] and body["detail"][0]["loc"] == ["body"]
    status, _ = _post(service.url + "/predict", {"records": raw_rows(service.model.schema, 2)})
    assert status == 200


def test_deploy_serves_a_single_task_pool_member(service: Service) -> None:
    from ray import serve

    from emm_ray.serve.app import deploy
    from emm_ray.serve.settings import parse_settings

    member = service.member
    settings = parse_settings(
        {"model_uri": f"models:/{member.name}@champion", "tracking_uri": member.tracking_uri}
    )
    url = deploy(settings, name="emm-member", route_prefix="/member", port=_free_port())
    try:
        assert url == service.url + "/member", "the running proxy's address is returned"
        status, body = _request(url + "/healthz")
        assert status == 200 and body["model"]["alias"] == "champion"
        assert body["model"]["tasks"] == ["income"] and body["model"]["kind"] == "pool_member"
        rows = raw_rows(member.schema, count=3, seed=7)
        status, body = _post(url + "/predict", {"records": rows})
        assert status == 200, body
        assert all(set(p) == {"income"} for p in body["predictions"])
        served = np.array([[p["income"]] for p in body["predictions"]])
        np.testing.assert_allclose(served, expected_probabilities(member, rows), atol=1e-6, rtol=0)
    finally:
        serve.delete("emm-member")


def test_a_version_that_fails_to_load_never_replaces_the_served_one(
    service: Service, tmp_path: Path
) -> None:
    """@champion moves to a tampered version: redeploying is refused before Serve is
    touched, the running version keeps answering, and a replica killed afterwards comes
    back with the pinned version, not the alias's new one."""
    from ray import serve

    from emm_ray.serve.app import deploy
    from emm_ray.serve.settings import parse_settings

    tracking_uri = service.model.tracking_uri
    good = register_member_version(tmp_path / "good", tracking_uri, "emm-pinned")
    settings = parse_settings(
        {"model_uri": "models:/emm-pinned@champion", "tracking_uri": tracking_uri}
    )
    url = deploy(settings, name="emm-pinned", route_prefix="/pinned", port=_free_port())
    rows = {"records": raw_rows(SCHEMA, count=2, seed=5)}
    try:
        status, body = _request(url + "/healthz")
        assert status == 200 and body["model"]["version"] == good
        bad = register_member_version(tmp_path / "bad", tracking_uri, "emm-pinned", tampered=True)
        with pytest.raises(ArtifactIntegrityError, match="checksum"):
            deploy(settings, name="emm-pinned", route_prefix="/pinned", port=_free_port())
        status, body = _post(url + "/predict", rows)
        assert status == 200 and body["model"]["version"] == good, (bad, body)

        (replica,) = _replica_pids("emm-pinned")
        os.kill(replica, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while not (_replica_pids("emm-pinned") - {replica}):
            assert time.monotonic() < deadline, "Serve did not replace the killed replica"
            time.sleep(0.5)
        while (answer := _post(url + "/predict", rows))[0] != 200:
            assert time.monotonic() < deadline, f"the new replica never answered: {answer}"
            time.sleep(0.5)
        assert answer[1]["model"]["version"] == good, "the restarted replica loaded another"
    finally:
        serve.delete("emm-pinned")


def test_load_generator_measures_a_real_deployment(service: Service) -> None:
    """Closed and open loop against the live service: every request answered and counted."""
    import asyncio

    from emm_ray.serve.loadgen import closed_loop, open_loop

    body = json.dumps({"records": raw_rows(service.model.schema, count=4, seed=3)}).encode()
    closed = asyncio.run(
        closed_loop(service.url + "/predict", [body], 4, 1.5, records_per_request=4, warmup_s=0.5)
    )
    row = closed.summary()
    assert row["errors"] == 0 and row["requests"] == len(closed.latencies_ms) > 4
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert row["records_per_s"] == pytest.approx(row["requests_per_s"] * 4, rel=0.01)
    opened = asyncio.run(open_loop(service.url + "/healthz", [None], rate=20, duration_s=1.5))
    assert opened.errors == 0
    assert 15 <= len(opened.latencies_ms) <= 50  # ~30 arrivals of a seeded Poisson process


def test_load_generator_counts_refusals_as_errors(service: Service) -> None:
    import asyncio

    from emm_ray.serve.loadgen import closed_loop

    bad = json.dumps({"records": [{"age": "not a number"}]}).encode()
    result = asyncio.run(closed_loop(service.url + "/predict", [bad], 2, 0.5, warmup_s=0))
    assert result.latencies_ms == [] and result.errors > 0
    assert result.error_samples[0].startswith("HTTP 422")


def _replica_pids(app: str = "") -> set[int]:
    """Live Serve replica processes (of `app`)."""
    return processes_titled(f"ray::ServeReplica:{app}")


def _hostile_request(schema: FeatureSchema) -> st.SearchStrategy[tuple[bytes, str]]:
    """(body, content type): records with any field wrong, missing or extra, any JSON,
    raw bytes that are not JSON or not UTF-8, deep nesting, huge values."""
    anything = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )
    value = st.one_of(
        anything,
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**400), max_value=10**400),
        st.integers(10_000, 100_000).map(lambda n: "\u00e9x" * n),
    )
    fields = [f.name for f in (*schema.sparse, *schema.dense)]
    valid = raw_rows(schema, count=1, seed=11)[0]
    record = st.builds(
        lambda changed, dropped, extra: (
            {k: changed.get(k, v) for k, v in valid.items() if k not in dropped} | extra
        ),
        st.dictionaries(st.sampled_from(fields), value, max_size=len(fields)),
        st.sets(st.sampled_from(fields), max_size=2),
        st.dictionaries(st.text(max_size=12), anything, max_size=2),
    )
    as_json = st.one_of(
        st.lists(record, min_size=0, max_size=MAX_RECORDS + 2).map(lambda r: {"records": r}),
        anything,
    ).map(lambda obj: json.dumps(obj, allow_nan=True).encode())
    raw = st.one_of(
        st.binary(max_size=200),
        st.integers(1, 50_000).map(lambda depth: b'{"records": ' + b"[" * depth),
        st.just(b'{"records": [{"age": 1e999999}]}'),
    )
    content_type = st.sampled_from(
        [
            "application/json",
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
        ]
    )
    return st.tuples(st.one_of(as_json, as_json, raw), content_type)


def test_hostile_requests_never_get_a_5xx(service: Service, figures_log: Any) -> None:
    """300 generated requests of every malformed kind (the reliability job sends 10,000)."""
    _hostile_campaign(service, 300, figures_log)


@pytest.mark.reliability
@pytest.mark.timeout(1800)
def test_ten_thousand_hostile_requests_never_get_a_5xx(service: Service, figures_log: Any) -> None:
    _hostile_campaign(service, 10_000, figures_log)


def _hostile_campaign(service: Service, count: int, figures_log: Any) -> None:
    """Each generated request gets a 2xx with probabilities or a 4xx that says what is
    wrong, never a 5xx; no replica restarts; the service still answers afterwards."""
    from hypothesis import given

    watch = _Answers(service)

    @_examples(count)
    @given(_hostile_request(service.model.schema))
    def send(request: tuple[bytes, str]) -> None:
        payload, content_type = request
        status, body = _send_raw(service.url + "/predict", payload, content_type)
        watch.check(status, body, f"{payload[:200]!r} ({content_type})")

    send()
    watch.report("hostile requests", count, figures_log)


def test_requests_generated_from_the_served_openapi_never_get_a_5xx(
    service: Service, figures_log: Any
) -> None:
    """300 schemathesis requests from the served OpenAPI document (the reliability job
    sends 10,000)."""
    _openapi_campaign(service, 300, figures_log)


@pytest.mark.reliability
@pytest.mark.timeout(1800)
def test_ten_thousand_requests_generated_from_the_served_openapi_never_get_a_5xx(
    service: Service, figures_log: Any
) -> None:
    _openapi_campaign(service, 10_000, figures_log)


def _openapi_campaign(service: Service, count: int, figures_log: Any) -> None:
    """schemathesis, driven by the deployment's own `/openapi.json`: requests that fit the
    schema and requests that break it (negative mode), to both endpoints."""
    import schemathesis
    from hypothesis import given
    from hypothesis import strategies as st
    from schemathesis.generation import GenerationMode

    status, document = _request(service.url + "/openapi.json")
    assert status == 200
    schema = schemathesis.openapi.from_dict(document)
    predict = schema["/predict"]["POST"]
    cases = st.one_of(
        predict.as_strategy(generation_mode=GenerationMode.POSITIVE),
        predict.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        predict.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        schema["/healthz"]["GET"].as_strategy(),
    )
    watch = _Answers(service)

    @_examples(count)
    @given(cases)
    def send(case: Any) -> None:
        response = case.call(base_url=service.url, timeout=60)
        watch.check(response.status_code, response.content, case.as_curl_command()[:300])

    send()
    watch.report("schemathesis requests from the served OpenAPI", count, figures_log)


def _examples(count: int) -> Any:
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )


class _Answers:
    """What generated requests got: status counts, and answers that break the contract
    (a 5xx; a refusal that does not say what is wrong; a 200 with a non-probability)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.replicas = self._replicas()
        assert self.replicas, "no replica of the service found to watch"
        self.statuses: dict[int, int] = {}
        self.failures: list[str] = []

    @staticmethod
    def _replicas() -> set[int]:
        return _replica_pids("emm-census:") | _replica_pids("emm-strict:")

    def check(self, status: int, body: bytes, request: str) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status >= 500 or (400 <= status < 500 and not body):
            self.failures.append(f"{status} for {request}: {body!r:.300}")
        elif status == 422 and not _names_what_is_wrong(body):
            self.failures.append(f"422 without a location for {request}: {body!r:.300}")
        elif status == 200 and b"predictions" in body:
            probabilities = [v for p in json.loads(body)["predictions"] for v in p.values()]
            if not all(0.0 <= v <= 1.0 for v in probabilities):
                self.failures.append(f"non-probability answered for {request}")

    def report(self, check: str, count: int, figures_log: Any) -> None:
        restarted = len(self.replicas - self._replicas())
        figures_log(
            check=check,
            requests_generated=sum(self.statuses.values()),
            responses_5xx=sum(n for code, n in self.statuses.items() if code >= 500),
            status_counts={str(code): n for code, n in sorted(self.statuses.items())},
            replica_restarts=restarted,
        )
        assert sum(self.statuses.values()) >= count
        failures = self.failures
        assert not failures, f"{len(failures)} bad answers, e.g.:\n" + "\n".join(failures[:5])
        assert not restarted, "a replica restarted under hostile input"
        rows = {"records": raw_rows(self.service.model.schema, 2)}
        status, _ = _post(self.service.url + "/predict", rows)
        assert status == 200


def _names_what_is_wrong(body: bytes) -> bool:
    """A 422 body: a message, and every problem located (body part, record, field)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    problems = answer.get("detail") if isinstance(answer, dict) else None
    return bool(answer.get("message")) and bool(problems) and all(p["loc"] for p in problems)


def _send_raw(url: str, payload: bytes, content_type: str) -> tuple[int, bytes]:
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url, data=payload, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_load_at_rising_concurrency_fails_no_request(service: Service, figures_log: Any) -> None:
    """Closed loop at 1, 4, 16 and 64 clients (past saturation of one replica on 2 cores):
    every request answered, throughput recorded."""
    import asyncio

    from emm_ray.serve.loadgen import closed_loop

    body = json.dumps({"records": raw_rows(service.model.schema, count=8, seed=5)}).encode()
    rows = []
    for clients in (1, 4, 16, 64):
        load = closed_loop(service.url + "/predict", [body], clients, 3.0, records_per_request=8)
        rows.append(asyncio.run(load).summary())
    figures_log(check="rising load", levels=rows)
    assert [r["errors"] for r in rows] == [0, 0, 0, 0], rows
    assert all(r["requests"] > 0 for r in rows)


def test_a_replica_killed_under_load_loses_only_requests_in_flight(
    service: Service, figures_log: Any
) -> None:
    """SIGKILL a replica's process while 4 clients load it: failures are at most the
    requests in flight at that moment, Serve replaces the replica, answers stay right."""
    import asyncio

    from ray import serve

    from emm_ray.serve.app import deploy
    from emm_ray.serve.loadgen import LoadResult, closed_loop
    from emm_ray.serve.settings import parse_settings

    model = service.model
    settings = parse_settings({"model_uri": model.uri, "tracking_uri": model.tracking_uri})
    url = deploy(settings, name="emm-kill", route_prefix="/kill", port=_free_port(), num_cpus=0.25)
    try:
        (victim,) = _replica_pids("emm-kill:")
        rows = raw_rows(model.schema, count=4, seed=21)
        body = json.dumps({"records": rows}).encode()
        result = LoadResult("closed", 4, None, 4)
        in_flight_at_kill: list[int] = []

        async def kill_under_load() -> None:
            load = asyncio.ensure_future(
                closed_loop(url + "/predict", [body], 4, 12.0, warmup_s=0.5, result=result)
            )
            await asyncio.sleep(3.0)
            in_flight_at_kill.append(result.in_flight)
            os.kill(victim, signal.SIGKILL)
            await load

        asyncio.run(kill_under_load())
        deadline = time.monotonic() + 60
        while not (_replica_pids("emm-kill:") - {victim}) and time.monotonic() < deadline:
            time.sleep(1)
        replaced = bool(_replica_pids("emm-kill:") - {victim})
        figures_log(
            check="replica killed under load",
            faults_injected=1,
            faults_survived=int(replaced and result.errors <= in_flight_at_kill[0]),
            in_flight_at_kill=in_flight_at_kill[0],
            failed_requests=result.errors,
            answered_requests=len(result.latencies_ms),
            replica_restarts=1,
        )
        assert result.errors <= in_flight_at_kill[0] <= 4, result.error_samples
        assert len(result.latencies_ms) > 10, "the deployment answered too little to judge"
        assert replaced, "the killed replica was not replaced"
        status, answer = _post(url + "/predict", {"records": rows})
        assert status == 200, answer
        served = np.array([[p[t] for t in model.tasks] for p in answer["predictions"]])
        np.testing.assert_allclose(served, expected_probabilities(model, rows), atol=1e-6, rtol=0)
    finally:
        serve.delete("emm-kill")
