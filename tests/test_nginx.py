"""Rendering the nginx templates: named variables only, every weight renders to a config `nginx -t` accepts."""

from __future__ import annotations

import re
import shutil

import pytest

from canary_kit.config import CanaryError
from canary_kit.control import reported_by, shadow_of, weight_of
from canary_kit.nginx import LocalNginx, render, split_directive
from conftest import local_settings

needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")


def test_render_substitutes_only_named_placeholders():
    text = "listen ${CANARY_LISTEN}; proxy_pass http://$canary_route; set $x ${request_id};"
    assert render(text, {"CANARY_LISTEN": "8000"}) == "listen 8000; proxy_pass http://$canary_route; set $x ${request_id};"


@pytest.mark.parametrize("variables", [{}, {"CANARY_LISTEN": "1", "CANARY_OTHER": "2"}])
def test_render_refuses_missing_or_unexpected_variables(variables):
    with pytest.raises(CanaryError, match="template variables do not match"):
        render("listen ${CANARY_LISTEN};", variables)


@pytest.mark.parametrize("weight,expected", [(0, "* blue;"), (10, "10% green; * blue;"), (100, "100% green; * blue;")])
def test_split_directive(weight, expected):
    assert split_directive(weight) == expected


@pytest.mark.parametrize("weight", [-1, 101, 150])
def test_split_directive_refuses_out_of_range(weight):
    with pytest.raises(CanaryError):
        split_directive(weight)


@needs_nginx
@pytest.mark.parametrize("weight", [0, 1, 10, 50, 99, 100])
def test_every_weight_renders_a_config_nginx_accepts(tmp_path, weight):
    nginx = LocalNginx(local_settings(tmp_path))
    nginx.write(weight)  # runs nginx -t and raises if it fails
    routes = nginx.routes_conf.read_text()
    assert weight_of(routes) == weight
    assert reported_by(routes) == f"{split_directive(weight)} mirror=off"
    assert not shadow_of(routes)
    assert not re.search(r"\$\{CANARY_[A-Z_]+\}", routes)  # no placeholder left behind
    assert "server_tokens off" in routes and "keepalive 64" in routes


@needs_nginx
def test_shadow_mode_renders_a_mirror_nginx_accepts(tmp_path):
    nginx = LocalNginx(local_settings(tmp_path))
    nginx.write(0)
    routes = nginx.render_routes(0, shadow=True)
    assert shadow_of(routes) and reported_by(routes) == "* blue; mirror=/_canary/shadow"
    nginx.routes_conf.write_text(routes)
    nginx.test()


@needs_nginx
def test_a_config_nginx_rejects_is_never_applied(tmp_path):
    nginx = LocalNginx(local_settings(tmp_path))
    nginx.write(10)
    before = nginx.routes_conf.read_bytes()
    with pytest.raises(CanaryError, match="nginx -t rejected"):
        nginx.apply(nginx.render_routes(50).replace("keepalive 64;", "keepalive sixty-four;"))
    assert nginx.routes_conf.read_bytes() == before
    leftovers = {p.name for p in tmp_path.iterdir() if p.is_file()} - {"canary.conf", "nginx.conf", "nginx.pid"}
    assert not leftovers, leftovers  # the candidate and its probe config are cleaned up
