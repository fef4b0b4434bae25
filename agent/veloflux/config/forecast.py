"""``forecast``: how far ahead each pool's load is forecast, from what history, and the
utilization a recommendation sizes the pool for."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from veloflux.config.fields import Seconds, Section

DAY_SECONDS = 86400.0


class ForecastSection(Section):
    """Load forecasts and server-count recommendations per pool."""

    enabled: bool = Field(default=True, description="the daemon refreshes forecasts")
    horizons_seconds: tuple[Seconds, ...] = Field(
        default=(900.0, 3600.0, DAY_SECONDS), alias="horizons", min_length=1, max_length=8
    )
    step_seconds: Seconds = Field(default=60.0, alias="step", ge=10, le=3600)
    history_seconds: Seconds = Field(
        default=28 * DAY_SECONDS, alias="history", ge=3 * DAY_SECONDS, le=90 * DAY_SECONDS
    )
    refresh_seconds: Seconds = Field(default=900.0, alias="refresh", ge=60)
    target_utilization: float = Field(default=0.7, gt=0, le=1)
    source: Literal["journal", "prometheus"] = "journal"

    @field_validator("horizons_seconds")
    @classmethod
    def _horizons(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < h <= DAY_SECONDS for h in value):
            raise ValueError("each horizon must be more than 0 and at most 1d")
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _steps(self) -> ForecastSection:
        if min(self.horizons_seconds) < self.step_seconds:
            raise ValueError("the shortest horizon is shorter than one step")
        return self

    def horizon_steps(self) -> tuple[int, ...]:
        return tuple(max(1, round(h / self.step_seconds)) for h in self.horizons_seconds)
