"""docker-compose.yml: valid for Compose v2's schema and for docker-compose 1.29, and wired as the design says."""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from canary_kit.stacks.nginx import NJS_MODULES, PACKAGED, ROUTES_TEMPLATES, TEMPLATE_SUFFIX, njs_module
from conftest import BIN, ROOT, free_port

COMPOSE = ROOT / "docker-compose.yml"
IMAGE_TEMPLATES = "/etc/nginx/templates"  # the nginx image renders each *.template there into /etc/nginx/conf.d/


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_spec_schema():
    checker = BIN / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True
    )
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
    # the public port on this host's loopback unless CANARY_BIND says otherwise; admin: this host only
    assert spec["services"]["nginx"]["ports"] == ["${CANARY_BIND:-127.0.0.1}:8000:8000", "127.0.0.1:8001:8001"]
    assert spec["services"]["nginx"]["environment"]["CANARY_ADMIN_LISTEN"] == "8001"


def test_backends_are_health_checked_and_nginx_waits_for_them(spec):
    services = spec["services"]
    for name in ("ml-blue", "ml-green"):
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"]), name
        assert services["nginx"]["depends_on"][name] == {"condition": "service_healthy"}
    assert services["ml-blue"]["image"] == "penguin_classifier:${CANARY_BLUE_VERSION:-v1.0.0}"
    assert services["ml-green"]["image"] == "penguin_classifier:${CANARY_GREEN_VERSION:-v1.1.0}"


def test_backends_keep_their_addresses_when_recreated(spec):
    """nginx resolves ml-blue and ml-green once; `canary deploy|finalize --compose` recreates them."""
    import ipaddress

    subnet = ipaddress.ip_network(spec["networks"]["canary"]["ipam"]["config"][0]["subnet"])
    addresses = {name: svc["networks"]["canary"]["ipv4_address"] for name, svc in spec["services"].items()}
    assert set(addresses) == {"ml-blue", "ml-green", "nginx"} and len(set(addresses.values())) == 3
    assert all(ipaddress.ip_address(a) in subnet for a in addresses.values())


def mounts(spec) -> dict[str, str]:
    """nginx's mounts: {where in the container: what of the project}."""
    return {v.split(":")[1]: v.split(":")[0] for v in spec["services"]["nginx"]["volumes"]}


def test_nginx_folder_holds_the_kits_templates_and_njs_as_they_are():
    """What compose mounts from nginx/ is what the local stack renders from canary_kit/templates/, byte for byte."""
    for name in (*ROUTES_TEMPLATES, *NJS_MODULES):
        assert (ROOT / "nginx" / name).read_bytes() == (PACKAGED / name).read_bytes(), name


def test_nginx_renders_the_shared_templates_with_every_variable(spec):
    nginx = spec["services"]["nginx"]
    templates = [(ROOT / "nginx" / name).read_text() for name in ROUTES_TEMPLATES]
    wanted = {found for template in templates for found in re.findall(r"\$\{(CANARY_[A-Z0-9_]+)\}", template)}
    given = {k for k in nginx["environment"] if k.startswith("CANARY_")}
    # the first state's split; the secrets are made at each start by a script the image sources (below)
    secrets = {"CANARY_SHADOW_SECRET", "CANARY_OPERATOR_SECRET"}
    assert given | secrets == wanted | {"CANARY_GREEN_WEIGHT"}
    assert not given & secrets
    # versions in nginx's environment would change with every deploy: `docker compose up` would recreate nginx
    assert not given & {"CANARY_BLUE_VERSION", "CANARY_GREEN_VERSION"}
    # every piece, file by file (nginx/ holds links, which a mounted folder would not follow), where the image
    # renders it into the folder canary.conf includes the servers from
    for name in ROUTES_TEMPLATES:
        assert mounts(spec)[f"{IMAGE_TEMPLATES}/{name}"] == f"./nginx/{name}"
    assert nginx["environment"]["CANARY_ROUTES_DIR"] == "/etc/nginx/conf.d"


def test_nginx_knows_the_service_as_the_local_stack_does(spec):
    """The endpoints and where their answers hold the predictions: what `canary` renders from [tool.canary], and
    the slots of the backends' fixed addresses."""
    from canary_kit.core.config import Settings
    from canary_kit.stacks.nginx import endpoint_variables

    env = spec["services"]["nginx"]["environment"]
    rendered = endpoint_variables(Settings())
    assert env["CANARY_ENDPOINTS"] == rendered["CANARY_ENDPOINTS"]
    assert json.loads(env["CANARY_OBSERVE"]) == json.loads(rendered["CANARY_OBSERVE"])
    assert env["CANARY_OBSERVE_FILTER"] == rendered["CANARY_OBSERVE_FILTER"]
    addresses = {name: svc["networks"]["canary"]["ipv4_address"] for name, svc in spec["services"].items()}
    assert json.loads(env["CANARY_SLOTS"]) == {
        f"{addresses['ml-blue']}:3000": "blue",
        f"{addresses['ml-green']}:3000": "green_a",
    }


@pytest.fixture(scope="module")
def compose_cmd() -> list[str]:
    """What `canary … --compose` would run: compose v2 where it answers, else docker-compose (1.29 here)."""
    from canary_kit.stacks.targets import compose_command

    command = shlex.split(compose_command())
    if shutil.which(command[0]) is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    return command


def test_the_relay_secret_is_made_at_each_start_before_the_templates_are_rendered(spec):
    """The image sources /docker-entrypoint.d/*.envsh (executable) in order, before 20-envsubst-on-templates.sh."""
    script = ROOT / "nginx" / "canary-secret.envsh"
    assert mounts(spec)["/docker-entrypoint.d/15-canary-secret.envsh"] == "./nginx/canary-secret.envsh"
    assert script.stat().st_mode & 0o111, "the image sources only executable .envsh files"
    made = [
        subprocess.run(
            ["sh", "-c", f'. "{script}"; echo "$CANARY_SHADOW_SECRET $CANARY_OPERATOR_SECRET"'],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for _ in range(2)
    ]
    print(f"\ntwo starts' secrets: {made}")
    secrets = [secret for pair in made for secret in pair]
    assert all(re.fullmatch(r"[0-9a-f]{64}", secret) for secret in secrets) and len(set(secrets)) == 4


def test_nginx_limits_clients_and_versions_as_the_kit_does_by_default(spec):
    """The limits, time bounds and pins compose gives nginx are the kit's defaults (what `canary up` renders), but
    for the trusted addresses: compose adds its network's gateway, through which this host's clients come."""
    from canary_kit.core.config import Settings
    from canary_kit.stacks.nginx import limit_variables

    env = spec["services"]["nginx"]["environment"]
    kit = limit_variables(Settings(service_name="any", blue_version="v1", green_version="v2"))
    given = {name: env[name] for name in kit}
    print(f"\ncompose: {given}\nkit:     {kit}")
    assert {k: v for k, v in given.items() if k != "CANARY_TRUSTED_CLIENTS"} == {
        k: v for k, v in kit.items() if k != "CANARY_TRUSTED_CLIENTS"
    }
    gateway = spec["networks"]["canary"]["ipam"]["config"][0]["subnet"].replace(".0/24", ".1/32")
    assert given["CANARY_TRUSTED_CLIENTS"] == f"{kit['CANARY_TRUSTED_CLIENTS']} {gateway} 1;"


def test_nginx_mounts_njs_and_a_conf_that_loads_it(spec):
    env = spec["services"]["nginx"]["environment"]
    assert mounts(spec)[env["CANARY_NJS"]] == "./nginx/canary.js"
    for name in NJS_MODULES:  # canary.js and the modules it imports, in the folder js_path names
        assert mounts(spec)[f"{env['CANARY_NJS_PATH']}/{name}"] == f"./nginx/{name}"
    assert mounts(spec)["/etc/nginx/nginx.conf"] == "./nginx/nginx.compose.conf"
    assert (
        "load_module /usr/lib/nginx/modules/ngx_http_js_module.so;"
        in (ROOT / "nginx" / "nginx.compose.conf").read_text()
    )
    assert (ROOT / "nginx" / "state").is_dir()  # committed, so docker never creates it as root


# The container's paths the compose nginx uses, each moved into a folder of the test's (the same layout below each).
CONTAINER_PATHS = {
    "/etc/nginx/": "etc",
    "/var/log/nginx/": "log",
    "/var/run/": "run",
    "/run/canary/": "run",
    "/var/lib/canary/": "state",
}


def envsubst(text: str, values: dict[str, str]) -> str:
    """envsubst with a list of names, as the image runs it: ${NAME} and $NAME of the listed names only."""
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_the_compose_nginx_config_as_the_image_renders_it_passes_nginx_t(spec, tmp_path):
    """The container's nginx config made as the image makes it, in a folder standing for the container's paths:
    every file mounted where compose puts it, each template rendered as 20-envsubst-on-templates.sh does (into
    conf.d/, .template dropped, only nginx's environment names that match NGINX_ENVSUBST_FILTER), then `nginx -T` on
    nginx.compose.conf: it passes, reads canary.conf and every server it includes once, and njs finds its modules."""
    env = {name: str(value) for name, value in spec["services"]["nginx"]["environment"].items()}
    env |= {"CANARY_SHADOW_SECRET": "a" * 64, "CANARY_OPERATOR_SECRET": "b" * 64}  # made by canary-secret.envsh
    assert not any("$" in value for value in env.values())  # nothing for compose itself to interpolate

    def here(text: str) -> str:
        for there, sub in CONTAINER_PATHS.items():
            text = text.replace(there, f"{tmp_path / sub}/")
        return text

    # the backends by the fixed addresses compose's DNS gives their names (nginx -t resolves them; it connects to none)
    addresses = {name: svc["networks"]["canary"]["ipv4_address"] for name, svc in spec["services"].items()}
    resolved = {name: re.sub(r"^([\w-]+)(?=:\d+$)", lambda m: addresses.get(m[1], m[1]), v) for name, v in env.items()}
    listed = {name: here(v) for name, v in resolved.items() if re.search(env["NGINX_ENVSUBST_FILTER"], name)}
    for sub in [*CONTAINER_PATHS.values(), "etc/conf.d"]:
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    for target, source in mounts(spec).items():
        if not source.startswith("./nginx/") or not any(target.startswith(p) for p in CONTAINER_PATHS):
            continue  # the state folder, and the entrypoint's hooks (tested above)
        text = (ROOT / source).read_text()
        if target.startswith(IMAGE_TEMPLATES + "/"):
            rendered = (
                tmp_path / "etc" / "conf.d" / target.removeprefix(IMAGE_TEMPLATES + "/").removesuffix(".template")
            )
            rendered.write_text(envsubst(text, listed))
        else:
            placed = Path(here(target))
            placed.parent.mkdir(parents=True, exist_ok=True)
            placed.write_text(here(text))
    conf = tmp_path / "etc" / "nginx.conf"
    image_own = Path("/etc/nginx/mime.types")  # the image's own file, which nginx.compose.conf includes
    (tmp_path / "etc" / "mime.types").write_text(image_own.read_text() if image_own.is_file() else "types {}\n")
    module = "/usr/lib/nginx/modules/ngx_http_js_module.so"
    me = pwd.getpwuid(os.geteuid()).pw_name  # the image's `nginx` user may not exist here
    conf.write_text(conf.read_text().replace(module, str(njs_module("nginx"))).replace("user nginx;", f"user {me};"))

    result = subprocess.run(["nginx", "-T", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    read = re.findall(r"^# configuration file (.+):$", result.stdout, re.M)
    print(f"\nnginx -T: rc {result.returncode}, files read: {read}\n{result.stderr}")
    assert result.returncode == 0, result.stderr
    conf_d = tmp_path / "etc" / "conf.d"
    pieces = [str(conf_d / name.removesuffix(TEMPLATE_SUFFIX)) for name in ROUTES_TEMPLATES]
    assert read == [str(conf), str(tmp_path / "etc" / "mime.types"), *pieces]
    assert sorted(conf_d.glob("*.conf")) == [conf_d / "canary.conf"]  # the servers come in through canary.conf only


def test_nginx_reads_the_routing_state_from_a_mounted_folder(spec, compose_cmd, monkeypatch):
    from canary_kit.stacks.compose import compose_service, mounted_folder, published_port
    from canary_kit.stacks.targets import COMPOSE_STATE_MOUNT

    monkeypatch.delenv("CANARY_COMPOSE_STATE", raising=False)  # the folder the compose file names by default
    nginx = compose_service(COMPOSE, "nginx", compose_cmd)  # as compose resolves it
    env = spec["services"]["nginx"]["environment"]
    assert mounted_folder(nginx, COMPOSE_STATE_MOUNT, ROOT) == ROOT / "nginx" / "state"
    assert (ROOT / "nginx" / "state").is_dir()  # committed, so docker never creates it as root
    assert env["CANARY_STATE_FILE"].startswith(COMPOSE_STATE_MOUNT + "/")
    assert published_port(nginx, int(env["CANARY_LISTEN"])) == 8000


def first_state(tmp_path, weight: str | None, existing: str | None = None, **servers) -> subprocess.CompletedProcess:
    """Run the compose nginx's first-state hook against a folder of ours (backends that do not answer, unless
    `servers` names some)."""
    state = tmp_path / "routing.json"
    if existing is not None:
        state.write_text(existing)
    nowhere = f"127.0.0.1:{free_port()}"
    env = {
        "PATH": "/usr/bin:/bin",
        "CANARY_STATE_FILE": str(state),
        "CANARY_BLUE_SERVER": nowhere,
        "CANARY_GREEN_SERVER": nowhere,
        **servers,
    }
    if weight is not None:
        env["CANARY_GREEN_WEIGHT"] = weight
    return subprocess.run(["sh", str(ROOT / "nginx" / "canary-state-init.sh")], env=env, capture_output=True, text=True)


def test_the_first_state_hook_writes_the_initial_split_once(tmp_path):
    from canary_kit.core import routing

    result = first_state(tmp_path, "25")
    assert result.returncode == 0, result.stderr
    state = routing.read(tmp_path / "routing.json")
    assert (state.green_weight, state.blue_version, state.green_version) == (25, None, None)  # asked at `deploy`
    again = first_state(tmp_path, "60")  # a restart keeps the last split
    assert again.returncode == 0 and "keeping" in again.stdout
    assert routing.read(tmp_path / "routing.json").green_weight == 25
    assert not [p.name for p in tmp_path.iterdir() if p.name != "routing.json"]


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is missing here (the nginx image has it)")


@needs_curl
def test_the_first_state_hook_names_the_versions_the_backends_answer_with(stack, tmp_path):
    from canary_kit.core import routing

    s = stack.settings
    result = first_state(
        tmp_path, "10", CANARY_BLUE_SERVER=f"127.0.0.1:{s.blue_port}", CANARY_GREEN_SERVER=f"127.0.0.1:{s.green_port}"
    )
    assert result.returncode == 0, result.stderr
    state = routing.read(tmp_path / "routing.json")
    assert (state.blue_version, state.green_version) == (s.blue_version, s.green_version), state


@needs_curl
def test_the_first_state_hook_writes_nothing_when_only_one_backend_says_its_version(stack, tmp_path):
    """One version alone would read as "green is free": green's share would silently go to blue."""
    result = first_state(tmp_path, "10", CANARY_BLUE_SERVER=f"127.0.0.1:{stack.settings.blue_port}")
    assert result.returncode == 1 and "only one of blue and green" in result.stderr, result.stderr
    assert not (tmp_path / "routing.json").exists()


@pytest.mark.parametrize(
    "weight, applied", [("0", 0), ("1", 1), ("100", 100), ("010", 10), ("08", 8), ("000", 0), ("0100", 100)]
)
def test_the_first_state_hook_writes_a_valid_state(tmp_path, weight, applied):
    """The hook's state is valid by canary_kit/core/routing.py, which reads every case of tests/data/routing_states.json
    as nginx/canary.js does (tests/test_nginx.py); a weight is read as a decimal number."""
    from canary_kit.core import routing

    result = first_state(tmp_path, weight)
    assert result.returncode == 0, result.stderr
    state = routing.read(tmp_path / "routing.json")
    assert state is not None and (state.green_weight, state.shadow, state.green_slot) == (applied, False, "green_a")
    assert state.serial == 1 and not state.green_free


@pytest.mark.parametrize("weight", ["150", "-1", "ten", "1e2", "0101", "99999999999999999999", " 5"])
def test_the_first_state_hook_refuses_a_bad_weight(tmp_path, weight):
    result = first_state(tmp_path, weight)
    assert result.returncode == 1 and "CANARY_GREEN_WEIGHT must be a whole number" in result.stderr
    assert not (tmp_path / "routing.json").exists()
    assert not list(tmp_path.iterdir())  # nor a temporary file


def test_compose_resolves_the_variables_and_the_pins_canary_writes(tmp_path, compose_cmd, monkeypatch):
    """The services as compose itself interpolates them: .env's pins (which `set_variables` writes, keeping every
    other line), defaults, and the shell over .env."""
    from canary_kit.stacks.compose import compose_service, image_repository, image_tag, project_name, set_variables

    (tmp_path / ".env").write_text("# mine\nOTHER=1\nCANARY_GREEN_VERSION=v1.1.0\n")
    set_variables(tmp_path, {"CANARY_GREEN_VERSION": "v1.2.0", "CANARY_BLUE_VERSION": "v1.1.0"})
    pinned = "# mine\nOTHER=1\nCANARY_GREEN_VERSION=v1.2.0\nCANARY_BLUE_VERSION=v1.1.0\n"
    assert (tmp_path / ".env").read_text() == pinned
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text(
        "services:\n"
        "  app:\n"
        "    image: app:${CANARY_GREEN_VERSION:-v1.0.0}\n"
        "    environment:\n"
        "      DEFAULTS: 'app:${UNSET:-v1.0.0} ${EMPTY-x} ${EMPTY:-y}'\n"
        "  registry:\n"
        "    image: registry:5000/team/app:${T:-v1}\n"
    )
    for name in ("CANARY_GREEN_VERSION", "UNSET", "T", "COMPOSE_PROJECT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EMPTY", "")
    app = compose_service(compose_file, "app", compose_cmd)
    assert app["image"] == "app:v1.2.0" and image_tag(app) == "v1.2.0"
    assert app["environment"]["DEFAULTS"] == "app:v1.0.0  y"
    monkeypatch.setenv("CANARY_GREEN_VERSION", "v9.9.9")  # the shell wins over .env, as in compose
    assert compose_service(compose_file, "app", compose_cmd)["image"] == "app:v9.9.9"
    assert image_repository(compose_service(compose_file, "registry", compose_cmd)) == "registry:5000/team/app"
    assert project_name(compose_file, compose_cmd) == re.sub(r"[^-_a-z0-9]", "", tmp_path.name.lower())
    set_variables(tmp_path, {"COMPOSE_PROJECT_NAME": "Canary-E2E"})  # compose reads the name from .env too
    assert project_name(compose_file, compose_cmd) == "canary-e2e"
