"""What a serving application is told by its YAML (`applications[].args` in serve_configs/).

The deployment's replica count and autoscaling stay in Serve's own `deployments:` section
of the same file; these settings are the model and request-handling options Serve does
not know about.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from emm_ray.config import StrictModel
from emm_ray.errors import ConfigError
from emm_ray.tracking.store import resolve_tracking_uri

# A registered name: no path separator, and not a relative path of its own ("." / "..").
MODEL_URI = re.compile(
    r"^models:/(?P<name>(?!\.\.?(?:[/@]|$))[^/\\@]+)(/(?P<version>\d+)|@(?P<alias>[\w-]+))\Z"
)


# Where Serve runs its HTTP proxies (`serve.start(proxy_location=...)`).
ProxyLocation = Literal["EveryNode", "HeadOnly"]


class ServeSettings(StrictModel):
    """Model reference and request limits of one serving application."""

    model_uri: str = Field(description="models:/<name>/<version> or models:/<name>@<alias>")
    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; default MLFLOW_TRACKING_URI, else ./mlruns.db",
    )
    max_batch_size: int = Field(default=256, ge=1, description="records per model forward")
    batch_wait_timeout_s: float = Field(default=0.005, ge=0.0)
    max_records_per_request: int = Field(default=256, ge=1)
    max_request_bytes: int = Field(
        default=4 * 1024**2,
        ge=1024,
        description="larger request bodies get a 413 before they are parsed",
    )
    unknown_category: Literal["oov", "reject"] = Field(
        default="oov",
        description="unseen category: map to the out-of-vocabulary index and warn, or answer 422",
    )
    pinned_version: str | None = Field(
        default=None,
        pattern=r"^\d+$",
        description=(
            "the registry version every replica loads; set when the application is built "
            "(`pin_version`), so a replica restarted or added later serves the version that "
            "was verified at deploy time even if the alias has moved since"
        ),
    )

    @field_validator("model_uri")
    @classmethod
    def _registry_uri(cls, value: str) -> str:
        if not MODEL_URI.match(value):
            raise ValueError(
                f"expected models:/<name>/<version> or models:/<name>@<alias>, got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _request_fits_a_batch(self) -> ServeSettings:
        if self.max_records_per_request > self.max_batch_size:
            raise ValueError(
                f"max_records_per_request ({self.max_records_per_request}) must not exceed "
                f"max_batch_size ({self.max_batch_size}): a full request must fit one forward"
            )
        return self

    def resolved_tracking_uri(self) -> str:
        """The tracking URI with a relative sqlite path made absolute.

        Replicas run in Ray's worker directory, not where `serve run` was typed, so a
        relative `sqlite:///mlruns.db` must be pinned to the caller's directory first.
        """
        uri = resolve_tracking_uri(self.tracking_uri)
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            uri = prefix + str(Path(uri[len(prefix) :]).resolve())
        return uri


def parse_settings(args: dict[str, Any], source: str = "serve config args") -> ServeSettings:
    """Validate `args` (the YAML's application args) into settings, naming each bad key."""
    try:
        settings = ServeSettings.model_validate(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from exc
    return settings.model_copy(update={"tracking_uri": settings.resolved_tracking_uri()})
