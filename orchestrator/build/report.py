"""Human-readable validation report of an artifact (Markdown, rendered with Jinja2)."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from orchestrator.build.validate import Validation
from orchestrator.spec.compose import ComposedSpec


def templates() -> Environment:
    """The Jinja2 environment of the build's Markdown templates (report, model card)."""
    env = Environment(
        loader=PackageLoader("orchestrator.build", "templates"),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["num"] = lambda v: "n/a" if v is None else f"{v:.4g}"
    return env


def render(
    template: str,
    spec: ComposedSpec,
    runtime: dict[str, Any],
    result: Validation,
    data: dict[str, Any],
    **extra: Any,
) -> str:
    """Render one of the build's Markdown templates over a build's spec, runtime and result."""
    return (
        templates()
        .get_template(template)
        .render(
            spec=spec.config,
            choices=spec.choices,
            runtime=runtime,
            result=result,
            data=data,
            **extra,
        )
    )


def render_report(
    spec: ComposedSpec, runtime: dict[str, Any], result: Validation, data: dict[str, Any]
) -> str:
    return render("report.md.j2", spec, runtime, result, data)
