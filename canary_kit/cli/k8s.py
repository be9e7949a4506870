"""`canary k8s render` and `canary k8s check`: the same canary on Kubernetes, from the rollout spec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from canary_kit.cli.options import settings_from
from canary_kit.core.errors import CanaryError, describe

k8s_app = typer.Typer(help="The same canary on Kubernetes: Argo Rollouts + Gateway API, from the rollout spec.")


@k8s_app.command("render")
def k8s_render(
    spec: Annotated[Path | None, typer.Option(help="rollout spec YAML [default: the committed one]")] = None,
    out: Annotated[Path, typer.Option(help="folder of the kustomize base")] = Path("deploy/k8s"),
    image_tag: Annotated[
        str | None, typer.Option(help="image tag of the version shipped \\[default: green_version of \\[tool.canary]]")
    ] = None,
    gateway: Annotated[str | None, typer.Option(help="Gateway the routes attach to [default: gateway]")] = None,
    prometheus: Annotated[str | None, typer.Option(help="Prometheus URL for the analysis")] = None,
) -> None:
    """Write the kustomize base (Rollout, Services, HTTPRoutes, AnalysisTemplate) from the rollout spec."""
    from canary_kit.k8s import manifests
    from canary_kit.k8s.served import ServedModel
    from canary_kit.policy.spec import load_spec

    try:
        served = ServedModel.from_settings(settings_from(), image_tag=image_tag, gateway=gateway, prometheus=prometheus)
    except ValidationError as exc:
        raise CanaryError(f"invalid setting: {describe(exc)}") from None
    written = manifests.render(served, load_spec(spec, {}), out, str(spec or "canary_kit/rollout.yaml"))
    typer.echo(f"wrote {len(written)} files to {out}: kubectl apply -k {out}")


@k8s_app.command("check")
def k8s_check(folder: Annotated[Path, typer.Argument(help="kustomize base")] = Path("deploy/k8s")) -> None:
    """Render FOLDER with kubectl kustomize and check what schemas miss: steps, routes, names, gates."""
    from canary_kit.k8s import checks

    docs = checks.kustomize(folder)
    checks.ensure(docs, checks.exports(settings_from().prediction_metrics))
    typer.echo(f"{folder}: {len(docs)} resources ({', '.join(sorted({d['kind'] for d in docs}))}), no problem found")
