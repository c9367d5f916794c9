"""A registered model name holds one data layout: an alias never moves to other data's model."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from emm_ray.errors import ConfigError
from emm_ray.models import build_model
from emm_ray.pipeline.config import PipelineConfig, load_pipeline_config
from emm_ray.tracking.artifacts import ArtifactManifest, save_module_artifact
from emm_ray.tracking.store import ensure_experiment, tracking_client
from emm_ray.tune.registry import LAYOUT_TAG, register_artifact
from tests.serve.models import SCHEMA

REPO = Path(__file__).resolve().parents[2]
OTHER_SCHEMA = SCHEMA.model_copy(update={"dataset": "census-tiny-other"})


def _logged_model(client: MlflowClient, tmp_path: Path, schema, name: str) -> str:
    """A real member artifact of `schema`, logged to a finished run; the run id."""
    model = build_model("mlp", schema, "income", embed_dim=4, hidden=(8,))
    manifest = ArtifactManifest(
        kind="member",
        name=name,
        architecture="mlp",
        tasks=("income",),
        hparams=model.hparams,
        schema_hash=schema.hash,
        parameter_checksum="",
    )
    save_module_artifact(tmp_path / name, model.state_dict(), manifest, schema)
    run = client.create_run(ensure_experiment(client, "registry-test"))
    client.log_artifacts(run.info.run_id, str(tmp_path / name), "model")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_a_model_of_another_schema_is_refused_and_the_alias_stays(tmp_path: Path) -> None:
    client = tracking_client(f"sqlite:///{tmp_path / 'mlruns.db'}")
    census = _logged_model(client, tmp_path, SCHEMA, "census_model")
    first = register_artifact(client, "emm-census", census, "model", alias="champion")
    assert client.get_registered_model("emm-census").tags[LAYOUT_TAG] == SCHEMA.layout_hash
    other = _logged_model(client, tmp_path, OTHER_SCHEMA, "other_model")
    with pytest.raises(
        ConfigError, match="holds models of dataset 'census-tiny'.*another model_name"
    ):
        register_artifact(client, "emm-census", other, "model", alias="champion")
    versions = client.search_model_versions("name = 'emm-census'")
    assert [v.version for v in versions] == [first.version]  # nothing was written
    assert client.get_model_version_by_alias("emm-census", "champion").version == first.version
    again = register_artifact(client, "emm-census", census, "model", alias="champion")
    assert again.tags[LAYOUT_TAG] == SCHEMA.layout_hash and int(again.version) == 2
    # the same data re-prepared (other vocabulary, so another encoding): a new version
    refreshed = SCHEMA.model_copy(
        update={
            "sparse": (
                SCHEMA.sparse[0].model_copy(update={"vocabulary": ("x",)}),
                *SCHEMA.sparse[1:],
            )
        }
    )
    assert refreshed.hash != SCHEMA.hash and refreshed.layout_hash == SCHEMA.layout_hash
    rerun = _logged_model(client, tmp_path, refreshed, "refreshed_model")
    assert int(register_artifact(client, "emm-census", rerun, "model").version) == 3


def test_a_name_registered_before_binding_takes_its_versions_schema(tmp_path: Path) -> None:
    client = tracking_client(f"sqlite:///{tmp_path / 'mlruns.db'}")
    census = _logged_model(client, tmp_path, SCHEMA, "census_model")
    client.create_registered_model("emm-legacy")  # as older emm-ray left it: no tags
    client.create_model_version("emm-legacy", source=f"runs:/{census}/model", run_id=census)
    other = _logged_model(client, tmp_path, OTHER_SCHEMA, "other_model")
    with pytest.raises(ConfigError, match=f"layout {SCHEMA.layout_hash}"):
        register_artifact(client, "emm-legacy", other, "model")


def test_a_run_without_a_model_artifact_is_refused(tmp_path: Path) -> None:
    client = tracking_client(f"sqlite:///{tmp_path / 'mlruns.db'}")
    run = client.create_run(ensure_experiment(client, "registry-test")).info.run_id
    with pytest.raises(ConfigError, match="is not a model artifact"):
        register_artifact(client, "emm-empty", run, "model")


def test_default_names_follow_the_data() -> None:
    """The default run (synthetic) and the real census run never share a registered name."""
    assert PipelineConfig().model_name == "emm-census-synthetic"
    assert load_pipeline_config(REPO / "configs/census.yaml").model_name == "emm-census"
    assert PipelineConfig(data={"name": "ali_ccp"}).model_name == "emm-ali-ccp-synthetic"
    assert PipelineConfig(model_name="mine").model_name == "mine"
    assert (
        PipelineConfig(
            data={"name": "census", "source": "real", "tasks": ["income", "foreign_born"]}
        ).model_name
        == "emm-census-2tasks"
    )
