"""Decomposer: align a heterogeneous pool into L levels of frozen components plus adapters.

Every member exposes `embedding -> blocks -> tower` (the contract in
`emm_ray.models.base`). Members differ in depth and width, so the decomposer

- groups each member's consecutive blocks into L level components (as evenly as
  possible, extra blocks in the earlier levels), so a 3-block MLP and a 5-block DCN-v2
  both contribute exactly one component per level;
- wraps every component (and the member's embedding) in `Frozen`;
- adds the small trainable adapters the fusion needs: an output adapter per component
  (`out_width -> d_model`, the token the AKF layer sees) and an input adapter per level
  (the task's fused state `d_model -> in_width` of the next component).

What feeds component (m, l+1)? Each block only understands its own member's state layout
(`[main | carry]`, with branch columns such as an FM term), so the only input that is
right by construction is the member's own previous output. In `residual` mode the
component receives exactly that, plus a zero-initialised linear map of its task's fused
state: at initialisation the pool member runs exactly as trained, and fusion can only add
information. In `fused` mode (the reference) it receives only the adapted fused state;
in `none` mode only its own previous output (the member runs exactly as trained).
Adapters are identity maps where widths already agree (as the reference's are), except
the residual adapter, which must start at zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from emm_ray.errors import ConfigError, SchemaMismatchError
from emm_ray.fusion.frozen import Frozen
from emm_ray.models.base import DecomposableModel


@dataclass(frozen=True)
class PoolMember:
    """A trained single-task model entering fusion: a unique name and its artifact manifest."""

    name: str
    model: DecomposableModel
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def architecture(self) -> str:
        return self.model.architecture

    def description(self) -> dict[str, Any]:
        """The member's artifact manifest, or a minimal one if it was never saved alone."""
        if self.manifest.get("kind"):
            return dict(self.manifest)
        return {
            "kind": "pool_member",
            "name": self.name,
            "architecture": self.architecture,
            "tasks": [self.task],
            "hparams": dict(self.model.hparams),
            "schema_hash": self.model.schema_hash,
            "extra": dict(self.manifest),
        }


def group_sizes(num_blocks: int, levels: int) -> list[int]:
    """Blocks per level when `num_blocks` consecutive blocks form `levels` groups."""
    if not 1 <= levels <= num_blocks:
        raise ConfigError(f"cannot split {num_blocks} blocks into {levels} levels")
    base, extra = divmod(num_blocks, levels)
    return [base + 1 if level < extra else base for level in range(levels)]


def derive_levels(members: Sequence[PoolMember], levels: int | None) -> int:
    """`levels` if every member has that many blocks; `None` -> the smallest block count."""
    if not members:
        raise ConfigError("the pool is empty: fusion needs at least one trained member")
    depths = {m.name: len(m.model.blocks) for m in members}
    shallowest = min(depths, key=depths.__getitem__)
    if levels is None:
        return depths[shallowest]
    if levels > depths[shallowest]:
        architecture = next(m.architecture for m in members if m.name == shallowest)
        raise ConfigError(
            f"fusion levels={levels} but member {shallowest!r} ({architecture}) has only "
            f"{depths[shallowest]} blocks; use levels <= {depths[shallowest]} or leave it unset"
        )
    return levels


def check_members(members: Sequence[PoolMember], schema_hash: str) -> None:
    """Names must be unique and every member must be trained on the fused schema."""
    names = [m.name for m in members]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"pool member names must be unique, repeated: {duplicated}")
    for member in members:
        if member.model.schema_hash != schema_hash:
            raise SchemaMismatchError(
                f"pool member {member.name!r} was trained on schema {member.model.schema_hash}, "
                f"but the fusion uses schema {schema_hash}"
            )


class LevelComponent(Frozen):
    """Consecutive frozen blocks of one member forming its component at one level."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__(nn.Sequential(*blocks))
        self.in_width: int = blocks[0].in_width
        self.out_width: int = blocks[-1].out_width


class ZeroLinear(nn.Linear):
    """A linear map initialised to exactly zero: a new path that starts contributing nothing."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


def width_adapter(in_width: int, out_width: int) -> nn.Module:
    """Identity where widths agree, else a trainable linear map."""
    return nn.Identity() if in_width == out_width else nn.Linear(in_width, out_width)


class AlignedMember(nn.Module):
    """One pool member cut into L frozen level components, with its trainable adapters.

    `fresh_width` is the width of the shared fresh embedding that feeds level 0 (`None`:
    the member's own frozen embedding does). The member's embedding and tower are kept,
    frozen, in both cases: they compute the member's own prediction (`native`). Without
    `d_model` (a fused model with no AKF stack) the member gets no adapters at all.
    """

    def __init__(
        self,
        member: PoolMember,
        levels: int,
        d_model: int | None,
        component_input: Literal["residual", "fused", "none"],
        fresh_width: int | None,
    ) -> None:
        super().__init__()
        decomposition = member.model.decompose()
        self.name = member.name
        self.task = member.task
        self.architecture = member.architecture
        self.input_mode = component_input
        self.embedding = Frozen(decomposition.embedding)
        self.tower = Frozen(decomposition.tower)
        self.embedding_width: int = decomposition.embedding.out_width
        blocks = list(decomposition.blocks)
        bounds = torch.tensor([0, *group_sizes(len(blocks), levels)]).cumsum(0).tolist()
        self.components = nn.ModuleList(
            LevelComponent(blocks[start:stop])
            for start, stop in zip(bounds, bounds[1:], strict=False)
        )
        self.hidden_width: int = self.components[-1].out_width
        if d_model is None:
            return
        first_input: nn.Module = (
            nn.Identity()
            if fresh_width is None
            else width_adapter(fresh_width, self.components[0].in_width)
        )
        later_inputs = [
            ZeroLinear(d_model, c.in_width)
            if component_input == "residual"
            else width_adapter(d_model, c.in_width)
            if component_input == "fused"
            else nn.Identity()  # `none`: the component reads its own previous output only
            for c in self.components[1:]
        ]
        self.input_adapters = nn.ModuleList([first_input, *later_inputs])
        self.output_adapters = nn.ModuleList(
            width_adapter(c.out_width, d_model) for c in self.components
        )

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """The frozen parameters and buffers under the trained member's own state-dict
        names, so `parameter_checksum` of it equals the member artifact's checksum unless
        fusion changed something."""
        state = {f"embedding.{k}": v for k, v in self.embedding.module.state_dict().items()}
        block = 0
        for component in self.components:
            for inner in component.module:
                state |= {f"blocks.{block}.{k}": v for k, v in inner.state_dict().items()}
                block += 1
        return state | {f"tower.{k}": v for k, v in self.tower.module.state_dict().items()}

    def embed(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """The member's own (frozen) embedding of the inputs."""
        return self.embedding(sparse, dense)

    def native(self, embedded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The member run as trained on its embedding: `(last hidden state [B, h], logit [B])`."""
        return self.native_after(0, self.components[0](embedded))

    def native_after(self, level: int, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`native`, continued from its own component output at `level`."""
        state = output
        for component in self.components[level + 1 :]:
            state = component(state)
        return state, self.tower(state)

    def component_input(
        self, level: int, previous: torch.Tensor, fused: torch.Tensor | None
    ) -> torch.Tensor:
        """Input of this member's component at `level`.

        `previous` is the embedding at level 0 and this member's own component output
        from `level - 1` after that; `fused` is its task's fused state from `level - 1`.
        """
        if level == 0:
            return self.input_adapters[0](previous)
        if self.input_mode == "none":
            return previous
        adapted = self.input_adapters[level](fused)
        return previous + adapted if self.input_mode == "residual" else adapted

    def run_level(self, level: int, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(component output in the member's own layout, d_model token for the AKF layer)`."""
        output = self.components[level](inputs)
        return output, self.token(level, output)

    def token(self, level: int, output: torch.Tensor) -> torch.Tensor:
        """The d_model token of this member's component output at `level`."""
        return self.output_adapters[level](output)
