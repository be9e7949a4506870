"""One Bento per version from the one bentofile: each holds exactly its model and serves its own version."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from canary_kit.stacks.local import Stack
from canary_kit.stacks.nginx import OPERATOR_URL, operator_transport
from conftest import BIN, EXAMPLE_ROW, ROOT, local_settings, run
from penguin.features import MODEL_NAME

pytestmark = [pytest.mark.bento, pytest.mark.integration]
VERSIONS = ("v1.0.0", "v1.1.0")


@pytest.fixture(scope="module")
def bentos(trained):
    for version in VERSIONS:
        run([str(BIN / "bentoml"), "build", "--version", version, "--arg", f"model_version={version}", "-o", "tag"])
    return VERSIONS


def test_each_bento_holds_only_its_own_model(bentos):
    import bentoml

    for version in bentos:
        bento = bentoml.get(f"{MODEL_NAME}:{version}")
        models = {str(m.tag) for m in bento.info.all_models}
        assert models == {f"{MODEL_NAME}:{version}"}, (version, models)
        assert bento.info.args == {"model_version": version}
        assert bento.info.labels["model_version"] == version
        src = Path(bento.path_of("src"))
        shipped = {str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()}
        model_code = {str(p.relative_to(ROOT)) for p in (ROOT / "penguin").glob("*.py")}
        assert shipped == {"service.py", "bentofile.yaml", *model_code}, shipped  # never the canary tool


def test_the_stack_serves_the_built_bentos(bentos, tmp_path):
    """`canary up --from-bentos`: `bentoml serve penguin_classifier:vX` behind nginx, each answering its version."""
    with Stack(local_settings(tmp_path, source="bento")) as stack:
        for slot, version in zip(("blue", "green_a"), VERSIONS):
            health = httpx.get(f"{stack.settings.slot_url(slot)}/health").json()
            assert health["model_version"] == version
        with httpx.Client(transport=operator_transport(stack.settings)) as operator:  # pins apply there
            pinned = operator.post(
                f"{OPERATOR_URL}/predict", json={"instances": [EXAMPLE_ROW]}, headers={"X-Canary": "always"}
            )
        assert pinned.status_code == 200 and pinned.json()["model_version"] == "v1.1.0"
