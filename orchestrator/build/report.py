"""Human-readable validation report of an artifact (Markdown, rendered with Jinja2).

Every ``{{ value }}`` of the Markdown templates passes through
:func:`orchestrator.core.text.md_text` (the environment's ``finalize``): names and
descriptions from the spec cannot inject HTML, links or table rows. Values meant as
code go through the ``code`` filter (a code span); Markdown syntax lives only in the
templates' literal text.
"""

from __future__ import annotations

import json
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from orchestrator.build.validate import Validation
from orchestrator.core.text import md_code, md_text
from orchestrator.spec.compose import ComposedSpec


def templates() -> Environment:
    """The Jinja2 environment of the build's Markdown templates (report, model card)."""
    env = Environment(
        loader=PackageLoader("orchestrator.build", "templates"),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        finalize=_markdown,
    )
    env.filters["num"] = lambda v: Markup(md_text("n/a" if v is None else f"{v:.4g}"))
    env.filters["code"] = lambda v: Markup(md_code(v))
    env.filters["tojson"] = lambda v: Markup(md_code(json.dumps(v, sort_keys=True, default=str)))
    return env


def _markdown(value: Any) -> Any:
    """Each ``{{ value }}`` as Markdown text, unless a filter made it Markdown already."""
    return value if isinstance(value, Markup) else md_text(value)


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
