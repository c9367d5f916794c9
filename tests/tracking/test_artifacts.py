"""Artifacts: the checksum pins the weights, tampering and schema mismatches are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from emm_ray.data.schema import DenseField, FeatureSchema, SparseField, Task
from emm_ray.errors import ArtifactIntegrityError, SchemaMismatchError
from emm_ray.tracking.artifacts import (
    MANIFEST_FILE,
    STATE_FILE,
    ArtifactManifest,
    load_module_artifact,
    parameter_checksum,
    save_module_artifact,
)


def schema(vocabulary: tuple[str, ...] = ("a", "b")) -> FeatureSchema:
    return FeatureSchema(
        dataset="toy",
        sparse=(SparseField(name="colour", vocabulary=vocabulary),),
        dense=(DenseField(name="age", mean=40.0, std=10.0),),
        tasks=(Task(name="click"), Task(name="buy")),
    )


def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embedding.weight": torch.randn(3, 4, generator=g),
        "tower.bias": torch.randn(1, generator=g),
        "half": torch.randn(2, 2, generator=g).to(torch.bfloat16),
    }


def manifest(s: FeatureSchema) -> ArtifactManifest:
    return ArtifactManifest(
        kind="pool_member",
        name="mlp_click",
        architecture="mlp",
        tasks=("click",),
        hparams={"hidden": [8, 4]},
        schema_hash=s.hash,
        data_fingerprint="abc123",
        metrics={"val_auc": 0.75},
    )


def saved(tmp_path: Path) -> Path:
    s = schema()
    save_module_artifact(tmp_path / "model", weights(), manifest(s), s)
    return tmp_path / "model"


def test_checksum_is_order_and_device_independent_and_bit_sensitive() -> None:
    w = weights()
    assert parameter_checksum(w) == parameter_checksum(dict(reversed(list(w.items()))))
    changed = dict(w)
    changed["tower.bias"] = w["tower.bias"].clone()
    changed["tower.bias"].view(torch.int32)[0] ^= 1  # flip the lowest mantissa bit
    assert parameter_checksum(changed) != parameter_checksum(w)
    renamed = {("x" if k == "tower.bias" else k): v for k, v in w.items()}
    assert parameter_checksum(renamed) != parameter_checksum(w)


def test_round_trip_restores_weights_manifest_and_schema(tmp_path: Path) -> None:
    directory = saved(tmp_path)
    artifact = load_module_artifact(directory, expected_schema=schema())
    assert set(artifact.state_dict) == set(weights())
    assert all(torch.equal(artifact.state_dict[k], v) for k, v in weights().items())
    assert artifact.manifest.parameter_checksum == parameter_checksum(weights())
    assert artifact.manifest.versions["torch"] == torch.__version__
    assert {"ray", "emm_ray", "python"} <= set(artifact.manifest.versions)
    assert artifact.manifest.hparams == {"hidden": [8, 4]}
    assert artifact.schema == schema()


def test_nested_component_manifests_survive_the_round_trip(tmp_path: Path) -> None:
    s = schema()
    member = manifest(s).model_copy(update={"parameter_checksum": "f" * 64})
    fused = ArtifactManifest(
        kind="emm",
        name="fused",
        architecture="emm",
        tasks=("click", "buy"),
        schema_hash=s.hash,
        components=(member, member.model_copy(update={"name": "other"})),
    )
    save_module_artifact(tmp_path, weights(), fused, s)
    loaded = load_module_artifact(tmp_path).manifest
    assert [c.name for c in loaded.components] == ["mlp_click", "other"]
    assert loaded.components[0] == member


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    directory = saved(tmp_path)
    state = torch.load(directory / STATE_FILE, weights_only=True)
    state["tower.bias"] += 1e-3
    torch.save(state, directory / STATE_FILE)
    with pytest.raises(ArtifactIntegrityError, match="checksum"):
        load_module_artifact(directory)


def test_truncated_weights_file_is_refused(tmp_path: Path) -> None:
    directory = saved(tmp_path)
    raw = (directory / STATE_FILE).read_bytes()
    (directory / STATE_FILE).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ArtifactIntegrityError, match=STATE_FILE):
        load_module_artifact(directory)


def test_a_flipped_byte_inside_the_stored_tensor_is_refused(tmp_path: Path) -> None:
    directory = saved(tmp_path)
    raw = bytearray((directory / STATE_FILE).read_bytes())
    at = raw.find(weights()["embedding.weight"].numpy().tobytes())
    assert at > 0
    raw[at + 5] ^= 0xFF
    (directory / STATE_FILE).write_bytes(bytes(raw))
    with pytest.raises(ArtifactIntegrityError, match=STATE_FILE):
        load_module_artifact(directory)


def test_pickled_code_is_never_executed(tmp_path: Path) -> None:
    """A state file carrying an arbitrary object is rejected by weights_only loading."""
    directory = saved(tmp_path)
    torch.save({"weights": Path("/")}, directory / STATE_FILE)
    with pytest.raises(ArtifactIntegrityError, match="cannot be read as weights"):
        load_module_artifact(directory)


def test_edited_schema_file_is_refused(tmp_path: Path) -> None:
    directory = saved(tmp_path)
    raw = json.loads((directory / "schema.json").read_text())
    raw["sparse"][0]["vocabulary"] = ["a", "b", "c"]
    (directory / "schema.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactIntegrityError, match="modified after it was saved"):
        load_module_artifact(directory)


def test_missing_or_broken_manifest_is_refused(tmp_path: Path) -> None:
    directory = saved(tmp_path)
    (directory / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ArtifactIntegrityError, match="not a valid manifest"):
        load_module_artifact(directory)
    (directory / MANIFEST_FILE).unlink()
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        load_module_artifact(directory)


def test_artifact_for_another_schema_is_a_schema_mismatch(tmp_path: Path) -> None:
    directory = saved(tmp_path)
    other = schema(vocabulary=("a", "b", "c"))
    with pytest.raises(SchemaMismatchError, match="mlp_click"):
        load_module_artifact(directory, expected_schema=other)


def test_saving_with_a_schema_other_than_the_manifest_names_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactIntegrityError, match="names schema"):
        save_module_artifact(tmp_path, weights(), manifest(schema()), schema(("x",)))
