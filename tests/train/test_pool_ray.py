"""A heterogeneous pool on the local Ray cluster: trained in parallel, logged, reloadable.

One pool is trained once for the module (4 members at 0.5 CPU each, all at once on the
2-CPU session cluster): three good members of different architectures and tasks, one
member whose learning rate makes its loss diverge inside its Ray Train worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from emm_ray.data.prepare import DatasetConfig, PreparedDataset, prepare_dataset
from emm_ray.data.streaming import load_split
from emm_ray.errors import SchemaMismatchError
from emm_ray.tracking.artifacts import parameter_checksum
from emm_ray.train.loop import TensorBatches, evaluate
from emm_ray.train.members import find_member, load_member
from emm_ray.train.pool import PoolReport, train_pool
from emm_ray.train.pool_spec import PoolSpec

pytestmark = [pytest.mark.ray]

GOOD = ["mlp_income", "deepfm_married", "dcn_income"]


def pool_spec() -> PoolSpec:
    small = {"embed_dim": 8, "hidden": [32, 16]}
    return PoolSpec.model_validate(
        {
            "name": "test_pool",
            "experiment": "test-pool",
            "train": {"epochs": 2, "batch_size": 512, "lr": 0.003, "patience": None},
            "resources": {"cpu": 0.5},
            "members": [
                {
                    "name": "mlp_income",
                    "architecture": "mlp",
                    "task": "income",
                    "hparams": small,
                    "resources": {"cpu": 0.5, "gpu": 0.25},
                },
                {
                    "name": "deepfm_married",
                    "architecture": "deepfm",
                    "task": "never_married",
                    "hparams": small,
                },
                {
                    "name": "dcn_income",
                    "architecture": "dcn_v2",
                    "task": "income",
                    "hparams": {**small, "cross_rank": 8},
                },
                {
                    "name": "diverging",
                    "architecture": "mlp",
                    "task": "never_married",
                    "hparams": small,
                    "train": {"lr": 1e30},
                },
            ],
        }
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    return prepare_dataset(DatasetConfig(rows=6000, seed=3), tmp_path_factory.mktemp("data") / "d")


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlruns.db'}"


@pytest.fixture(scope="module")
def trained(
    ray_cluster: None,
    prepared: PreparedDataset,
    tracking_uri: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> PoolReport:
    return train_pool(
        pool_spec(),
        prepared,
        storage_path=tmp_path_factory.mktemp("ray"),
        tracking_uri=tracking_uri,
    )


@pytest.mark.timeout(420)
def test_good_members_train_and_the_diverging_one_fails_alone(trained: PoolReport) -> None:
    status = {m.name: m.status for m in trained.members}
    assert status == {**dict.fromkeys(GOOD, "trained"), "diverging": "failed"}
    failed = trained.failed[0]
    assert "TrainingDivergedError" in failed.error and "lower the learning rate" in failed.error
    for member in trained.members[:3]:
        assert member.val_auc is not None and member.val_auc > 0.6, member
        assert member.samples_per_s and member.samples_per_s > 0


@pytest.mark.timeout(120)
def test_mlflow_holds_every_member_with_its_outcome(
    trained: PoolReport, tracking_uri: str, prepared: PreparedDataset
) -> None:
    client = MlflowClient(tracking_uri)
    runs = {m.name: client.get_run(m.run_id) for m in trained.members}
    for name in GOOD:
        run = runs[name]
        assert run.info.status == "FINISHED"
        assert run.data.tags["emm.schema_hash"] == prepared.schema.hash
        assert run.data.params["architecture"] in {"mlp", "deepfm", "dcn_v2"}
        history = client.get_metric_history(run.info.run_id, "val_auc")
        assert [m.step for m in history] == [1, 2]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
        assert artifacts == {
            f"model/{name}"
            for name in (
                "state_dict.pt",
                "manifest.json",
                "schema.json",
                "MLmodel",  # an MLflow Model too (pyfunc flavor)
                "input_example.json",
                "serving_input_example.json",
            )
        }
    assert runs["diverging"].info.status == "FAILED"
    assert "TrainingDivergedError" in runs["diverging"].data.tags["emm.error"]


@pytest.mark.timeout(120)
def test_reloaded_members_reproduce_their_logged_validation_auc(
    trained: PoolReport, tracking_uri: str, prepared: PreparedDataset
) -> None:
    validation = TensorBatches(load_split(prepared.path, "validation"), 65536)
    client = MlflowClient(tracking_uri)
    for name in GOOD:
        run_id = trained.run_ids()[name]
        member = load_member(run_id, schema=prepared.schema, tracking_uri=tracking_uri)
        assert member.manifest.parameter_checksum == parameter_checksum(member.model.state_dict())
        assert member.manifest.data_fingerprint == prepared.split_info["config_hash"]
        task = prepared.schema.task_index(member.task)
        recomputed = evaluate(member.model, validation, [task], [member.task])["auc"]
        logged = client.get_run(run_id).data.metrics["best_val_auc"]
        assert recomputed == pytest.approx(logged, abs=1e-6), name
        assert find_member(name, experiment="test-pool", tracking_uri=tracking_uri) == run_id


@pytest.mark.timeout(120)
def test_loading_for_another_schema_is_a_schema_mismatch(
    trained: PoolReport, tracking_uri: str, prepared: PreparedDataset
) -> None:
    other = prepared.schema.model_copy(update={"dataset": "census-other"})
    with pytest.raises(SchemaMismatchError, match="mlp_income"):
        load_member(trained.run_ids()["mlp_income"], schema=other, tracking_uri=tracking_uri)


@pytest.mark.timeout(120)
def test_gpu_request_on_this_cpu_cluster_trains_on_cpu_with_a_note(trained: PoolReport) -> None:
    mlp = next(m for m in trained.members if m.name == "mlp_income")
    assert mlp.device == "cpu"
    assert any("no GPU" in note and "training on CPU" in note for note in mlp.notes)


@pytest.mark.timeout(120)
def test_rerun_skips_members_already_trained(
    trained: PoolReport, tracking_uri: str, prepared: PreparedDataset, tmp_path: Path
) -> None:
    again = train_pool(
        pool_spec(), prepared, storage_path=tmp_path, tracking_uri=tracking_uri, only=GOOD
    )
    assert [m.status for m in again.members] == ["skipped"] * 3
    assert again.run_ids() == {n: trained.run_ids()[n] for n in GOOD}
    assert again.members[0].val_auc == pytest.approx(trained.members[0].val_auc)


def test_changed_spec_is_not_skipped(prepared: PreparedDataset) -> None:
    """The rerun key covers the training config: another lr is other work."""
    from emm_ray.train.members import MemberIdentity

    spec = pool_spec()
    member = spec.members[0]
    base = MemberIdentity(
        pool="p",
        name=member.name,
        architecture=member.architecture,
        task=member.task,
        hparams=member.full_hparams(),
        train=spec.member_train(member),
        schema_hash=prepared.schema.hash,
        data_fingerprint="x",
    )
    other = MemberIdentity(**{**base.__dict__, "train": base.train.model_copy(update={"lr": 0.1})})
    assert base.digest != other.digest
    assert base.lookup_tags()["spec_digest"] != other.lookup_tags()["spec_digest"]
    same = MemberIdentity(**base.__dict__)
    assert same.digest == base.digest


@pytest.mark.timeout(120)
def test_cli_reports_the_pool_and_exits_non_zero_on_a_failed_member(
    trained: PoolReport,
    tracking_uri: str,
    prepared: PreparedDataset,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Trained members are skipped; a member asking for more CPUs than the cluster has fails
    at once (no training), and the CLI says so with exit status 1."""
    import importlib.util

    import yaml

    raw = pool_spec().model_dump(mode="json")
    too_big = {**raw["members"][0], "name": "too_big", "resources": {"cpu": 64.0}}
    raw["members"] = [m for m in raw["members"] if m["name"] in GOOD] + [too_big]
    config = tmp_path / "pool.yaml"
    config.write_text(yaml.safe_dump(raw))
    source = Path(__file__).resolve().parents[2] / "pipelines" / "pool.py"
    loaded = importlib.util.spec_from_file_location("pool_pipeline", source)
    cli = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(cli)
    status = cli.main(
        [
            "--config",
            str(config),
            "--data",
            str(prepared.path),
            "--tracking-uri",
            tracking_uri,
            "--storage",
            str(tmp_path / "ray"),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert status == 1
    out = capsys.readouterr()
    assert "too_big" in out.err
    report = (tmp_path / "out" / "pool_report.md").read_text()
    assert report.count("| skipped |") == 3
    assert "too_big FAILED: needs 64.0 CPU" in report
