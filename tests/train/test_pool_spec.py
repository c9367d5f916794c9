"""Pool specs: bad names and values fail on load, naming the file, member and choices."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emm_ray.data.schema import FeatureSchema, SparseField, Task
from emm_ray.errors import ConfigError
from emm_ray.train.pool_spec import load_pool_spec
from emm_ray.train.ray_job import WorkerResources, fit_resources

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, members: list[dict], **top: object) -> Path:
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump({"name": "p", **top, "members": members}))
    return path


def test_shipped_pool_configs_load() -> None:
    paths = sorted((REPO / "configs" / "pools").glob("*.yaml"))
    assert {p.name for p in paths} >= {"census_small.yaml", "census_full.yaml"}
    for path in paths:
        assert load_pool_spec(path).members, path


def test_default_pool_is_heterogeneous_over_both_census_tasks() -> None:
    spec = load_pool_spec(REPO / "configs" / "pools" / "census_small.yaml")
    assert len({m.architecture for m in spec.members}) >= 3
    assert {m.task for m in spec.members} == {"income", "never_married"}


def test_full_pool_covers_every_architecture_on_both_census_tasks() -> None:
    from emm_ray.models.registry import ARCHITECTURES

    spec = load_pool_spec(REPO / "configs" / "pools" / "census_full.yaml")
    pairs = {(m.architecture, m.task) for m in spec.members}
    assert pairs == {(a, t) for a in ARCHITECTURES for t in ("income", "never_married")}


def test_unknown_architecture_lists_the_choices(tmp_path: Path) -> None:
    path = write(tmp_path, [{"name": "a", "architecture": "transformer9000", "task": "income"}])
    with pytest.raises(ConfigError) as error:
        load_pool_spec(path)
    message = str(error.value)
    assert str(path) in message and "'transformer9000'" in message
    assert "mlp" in message and "deepfm" in message and "member 'a'" in message


def test_unknown_hyperparameter_is_refused_before_training(tmp_path: Path) -> None:
    path = write(
        tmp_path, [{"name": "a", "architecture": "mlp", "task": "income", "hparams": {"widht": 3}}]
    )
    with pytest.raises(ConfigError, match="widht.*unknown hyperparameter"):
        load_pool_spec(path)


def test_bad_train_override_names_the_member(tmp_path: Path) -> None:
    member = {"name": "a", "architecture": "mlp", "task": "income", "train": {"lr": -1}}
    with pytest.raises(ConfigError, match="member 'a'.*lr"):
        load_pool_spec(write(tmp_path, [member]))
    member["train"] = {"learning_rate": 0.1}
    with pytest.raises(ConfigError, match="learning_rate"):
        load_pool_spec(write(tmp_path, [member]))


def test_duplicate_member_names_are_refused(tmp_path: Path) -> None:
    member = {"name": "a", "architecture": "mlp", "task": "income"}
    with pytest.raises(ConfigError, match="repeated: \\['a'\\]"):
        load_pool_spec(write(tmp_path, [member, member]))


def test_unknown_task_is_checked_against_the_schema(tmp_path: Path) -> None:
    spec = load_pool_spec(
        write(
            tmp_path,
            [
                {"name": "a", "architecture": "mlp", "task": "income"},
                {"name": "b", "architecture": "mlp", "task": "clicks"},
            ],
        )
    )
    schema = FeatureSchema(
        dataset="toy",
        sparse=(SparseField(name="f", vocabulary=("x",)),),
        dense=(),
        tasks=(Task(name="income"), Task(name="never_married")),
    )
    with pytest.raises(ConfigError, match="b -> 'clicks'.*\\['income', 'never_married'\\]"):
        spec.check_tasks(schema)


def test_member_overrides_merge_over_pool_defaults(tmp_path: Path) -> None:
    spec = load_pool_spec(
        write(
            tmp_path,
            [
                {"name": "a", "architecture": "mlp", "task": "income", "train": {"lr": 0.01}},
                {"name": "b", "architecture": "mlp", "task": "income", "resources": {"cpu": 1.5}},
            ],
            train={"epochs": 3, "lr": 0.001},
        )
    )
    a, b = spec.members
    assert spec.member_train(a).lr == 0.01 and spec.member_train(a).epochs == 3
    assert spec.member_train(b).lr == 0.001
    assert spec.member_resources(b).cpu == 1.5 and spec.member_resources(a).cpu == 0.5


def test_gpu_request_on_a_cpu_only_cluster_falls_back_with_a_message() -> None:
    resources, message = fit_resources("m", WorkerResources(cpu=0.5, gpu=0.25), 0.0)
    assert resources.gpu == 0.0 and resources.cpu == 0.5
    assert message is not None and "no GPU" in message and "training on CPU" in message
    kept, none = fit_resources("m", WorkerResources(gpu=0.25), 1.0)
    assert kept.gpu == 0.25 and none is None
