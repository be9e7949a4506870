"""docker-compose.yml: valid for Compose v2's schema and for docker-compose 1.29, and wired as the design says."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from conftest import BIN, ROOT

COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_spec_schema():
    checker = BIN / "check-jsonschema"
    result = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose 1.29 is not installed")
def test_docker_compose_1_29_accepts_it():
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_no_top_level_name(spec):
    assert "name" not in spec  # docker-compose 1.29 rejects it


def test_only_nginx_publishes_a_port(spec):
    published = {name for name, svc in spec["services"].items() if svc.get("ports")}
    assert published == {"nginx"}
    assert spec["services"]["nginx"]["ports"] == ["8000:8000"]


def test_backends_are_health_checked_and_nginx_waits_for_them(spec):
    services = spec["services"]
    for name in ("ml-blue", "ml-green"):
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"]), name
        assert services["nginx"]["depends_on"][name] == {"condition": "service_healthy"}
    assert services["ml-blue"]["image"] == "penguin_classifier:v1.0.0"
    assert services["ml-green"]["image"] == "penguin_classifier:v1.1.0"


def test_nginx_renders_the_shared_template_with_every_variable(spec):
    nginx = spec["services"]["nginx"]
    template = (ROOT / "nginx" / "canary.conf.template").read_text()
    wanted = set(re.findall(r"\$\{(CANARY_[A-Z0-9_]+)\}", template))
    given = {k for k in nginx["environment"] if k.startswith("CANARY_")}
    assert given == wanted
    assert nginx["environment"]["CANARY_SPLIT"] == "10% green; * blue;"
    assert any(v.startswith("./nginx/canary.conf.template:/etc/nginx/templates/") for v in nginx["volumes"])
