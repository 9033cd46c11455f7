"""A reference model taken from MLflow (``model.source.kind: mlflow``).

Resolves ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` and ``runs:/RUN_ID/PATH``
against the project's tracking server, downloads the model's files and says
where they came from (registered name, version, run), so the build's evidence
links back to the exact model version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import TrackingError
from registry.tracking import tracking_uri

KEY = "model.source.uri"


@dataclass
class MlflowModel:
    """An MLflow model downloaded to ``local_dir`` and its lineage."""

    uri: str
    local_dir: Path
    flavors: dict[str, Any]
    lineage: dict[str, Any] = field(default_factory=dict)

    def flavor(self, name: str) -> dict[str, Any] | None:
        conf = self.flavors.get(name)
        return conf if isinstance(conf, dict) else None


def fetch_model(uri: str, root: Path, dest: Path) -> MlflowModel:
    """Download the model at ``uri`` into ``dest``; raise TrackingError naming the key."""
    import mlflow
    import yaml
    from mlflow.tracking import MlflowClient

    tracking = tracking_uri(root)
    client = MlflowClient(tracking, registry_uri=tracking)
    lineage: dict[str, Any] = {"uri": uri, "tracking_uri": tracking}
    try:
        m = re.fullmatch(r"models:/([^/@]+)(?:/([^/]+)|@(.+))", uri)
        if m:
            name, version, alias = m.groups()
            mv = (
                client.get_model_version_by_alias(name, alias)
                if alias
                else client.get_model_version(name, version)
            )
            lineage |= {
                "registered_model": name,
                "version": str(mv.version),
                "alias": alias,
                "run_id": mv.run_id,
                "source": mv.source,
            }
        elif uri.startswith("runs:/"):
            lineage["run_id"] = uri.split("/")[1]
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(dest), tracking_uri=tracking
        )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrackingError(f"error: {KEY}: '{uri}' from MLflow at {tracking}: {first}") from exc
    local_dir = Path(local)
    mlmodel = local_dir / "MLmodel"
    if not mlmodel.is_file():
        raise TrackingError(f"error: {KEY}: '{uri}' is not an MLflow model (no MLmodel file)")
    meta = yaml.safe_load(mlmodel.read_text()) or {}
    flavors = meta.get("flavors") or {}
    for k in ("model_id", "run_id", "mlflow_version", "utc_time_created"):
        if meta.get(k) is not None:
            lineage.setdefault(k, str(meta[k]))
    return MlflowModel(uri, local_dir, dict(flavors), lineage)


def load_pytorch(model: MlflowModel) -> Any:
    """The torch.nn.Module of a pytorch flavour (pickled ``model.pth`` or ``model.pt2``)."""
    import mlflow.pytorch

    return mlflow.pytorch.load_model(str(model.local_dir))


def load_pyfunc(model: MlflowModel) -> Any:
    """The python_function flavour's predictor."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(model.local_dir))
