"""Render the committed nginx templates for the local stack and check them with `nginx -t`.

The templates travel inside the kit (`canary_kit/templates/`); a project overrides any of them, file by file, with
one of the same name in its own `nginx/` folder. The njs modules are the exception: canary.js imports its modules
from its own folder, so a project with its own canary.js puts them beside it. Only `${CANARY_*}` placeholders are
substituted, and every one must be given: nginx's own `$variables` are never touched, and a forgotten placeholder
is an error, not an empty string.
The rendered config holds the backends' addresses only: the split lives in the routing state (routing.py),
which nginx reads per request, so nothing here runs while the stack serves.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import resource
import secrets
import stat
import subprocess
from pathlib import Path

import httpx

from canary_kit.core.config import SLOTS, Settings
from canary_kit.core.errors import CanaryError
from canary_kit.core.files import PRIVATE, private_folder, share, write_atomic
from canary_kit.core.routing import STATE_FILE

# The routes, shared with docker compose: the first includes the others, each rendered beside it (name less .template)
ROUTES_TEMPLATES = ("canary.conf.template", "canary-public.inc.template", "canary-internal.inc.template")
LOCAL_MAIN_TEMPLATE = "nginx.local.conf.template"
NJS_SCRIPT = "canary.js"  # what nginx imports; it imports the other modules
NJS_MODULES = (NJS_SCRIPT, "canary-observe.js")
TEMPLATE_SUFFIX = ".template"
NJS_MODULE = "ngx_http_js_module.so"
PATHS = ("predictions", "confidence")  # what an endpoint's answers are read for
OBSERVE_FILTER = "js_body_filter canary.observe buffer_type=buffer;"  # answers pass through canary.js observe
PLACEHOLDER = re.compile(r"\$\{(CANARY_[A-Z0-9_]+)\}")
MAX_NOFILE = 65536
WORKER_USERS = ("www-data", "nginx", "http")  # the usual unprivileged web users: Debian, RHEL and nginx.org, Arch
LOGS = ("access.log", "nginx-error.log")  # opened by nginx's master (root), written by its workers through it


def render(template: str, variables: dict[str, str]) -> str:
    """Substitute the named ${CANARY_*} placeholders; refuse missing or unexpected names."""
    return render_set({"": template}, variables)[""]


def render_set(templates: dict[str, str], variables: dict[str, str]) -> dict[str, str]:
    """Render templates that go together ({name: text}): every placeholder of any of them given, and every variable
    used by at least one."""
    wanted = {name for template in templates.values() for name in PLACEHOLDER.findall(template)}
    missing, unused = wanted - variables.keys(), variables.keys() - wanted
    if missing or unused:
        raise CanaryError(f"template variables do not match: missing {sorted(missing)}, unexpected {sorted(unused)}")
    return {name: PLACEHOLDER.sub(lambda m: variables[m.group(1)], text) for name, text in templates.items()}


PACKAGED = Path(__file__).parents[1] / "templates"  # the kit's own templates (canary_kit/templates)


def template_path(name: str, project_dir: Path) -> Path:
    """The project's own `nginx/NAME` when it has one (an override), else the kit's."""
    own = project_dir / "nginx" / name
    return own if own.is_file() else PACKAGED / name


def read_template(name: str, project_dir: Path) -> str:
    path = template_path(name, project_dir)
    if not path.is_file():
        raise CanaryError(f"nginx template {path} not found")
    return path.read_text()


def endpoint_variables(settings: Settings) -> dict[str, str]:
    """What the routes template knows of the service, for either stack: its prediction endpoints (a regex
    alternation of their paths) and where each one's answers hold the predictions (JSON, read by canary.js)."""
    observe = {
        path: {which: None if (found := e.path(which)) is None else list(found.steps) for which in PATHS}
        for path, e in settings.endpoints.items()
    }
    read = any(e.predictions for e in settings.endpoints.values())
    return {
        "CANARY_ENDPOINTS": "|".join(re.escape(path) for path in settings.endpoints),
        "CANARY_OBSERVE": json.dumps(observe, separators=(",", ":")),
        "CANARY_OBSERVE_FILTER": OBSERVE_FILTER if read else "# no endpoint names where its predictions are",
    }


def slot_variables(servers: dict[str, str]) -> dict[str, str]:
    """Which slot each backend address is ({slot: address}), for the version that answered (canary.js)."""
    return {"CANARY_SLOTS": json.dumps({address: slot for slot, address in servers.items()}, separators=(",", ":"))}


def limit_variables(settings: Settings) -> dict[str, str]:
    """What nginx allows a client, for either stack: per address (trusted ones aside), per version, and in time;
    and the pins on its public port (JSON, read by canary.js)."""
    pins = {"on": settings.pins, "header": settings.pin_header, "cookie": settings.pin_cookie}
    return {
        "CANARY_MAX_INFLIGHT": str(settings.max_inflight),
        "CANARY_CLIENT_CONNECTIONS": str(settings.client_connections),
        "CANARY_CLIENT_RATE": str(settings.client_rate),
        "CANARY_CLIENT_BURST": str(settings.client_burst),
        "CANARY_TRUSTED_CLIENTS": " ".join(f"{network} 1;" for network in settings.trusted_clients),
        "CANARY_HEADER_TIMEOUT": f"{round(settings.header_timeout * 1000)}ms",
        "CANARY_BODY_TIMEOUT": f"{round(settings.body_timeout * 1000)}ms",
        "CANARY_PINS": json.dumps({**pins, "user": settings.user_header}, separators=(",", ":")),
    }


def address(host: str, port: int) -> str:
    """HOST:PORT as nginx writes it (an IPv6 address in brackets)."""
    return f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"


def public_server(host: str, port: int) -> str:
    """Where nginx's public port is reached from nginx itself: a loopback address when it listens on all of them."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}
    return address(wildcard.get(host, host), port)


def routes_variables(settings: Settings, secret: str, operator: str) -> dict[str, str]:
    """The routing template's variables for the local stack: loopback backends, state and logs in the state folder,
    the secret that nginx's shadow copies carry to its relay (`secret`) and the one the admin server marks the
    operator's requests with (`operator`), both made at each start."""
    servers = {slot: f"127.0.0.1:{settings.slot_port(slot)}" for slot in SLOTS}
    script = template_path(NJS_SCRIPT, settings.project_dir)
    return {
        **endpoint_variables(settings),
        **slot_variables(servers),
        **limit_variables(settings),
        "CANARY_BLUE_SERVER": servers["blue"],
        "CANARY_GREEN_SERVER": servers["green_a"],
        "CANARY_GREEN_B_SERVER": servers["green_b"],
        "CANARY_LISTEN": address(settings.host, settings.port),
        "CANARY_PUBLIC_SERVER": public_server(settings.host, settings.port),
        "CANARY_ACCESS_LOG": str(settings.state_dir / "logs" / "access.log"),
        "CANARY_ERROR_LOG": str(settings.state_dir / "logs" / "nginx-error.log"),
        "CANARY_NJS": str(script),
        "CANARY_NJS_PATH": str(script.parent),
        "CANARY_ROUTES_DIR": str(settings.state_dir),
        "CANARY_STATE_FILE": str(settings.state_dir / STATE_FILE),
        "CANARY_ADMIN_LISTEN": f"unix:{admin_socket(settings)}",
        "CANARY_SHADOW_SOCKET": str(shadow_socket(settings)),
        "CANARY_SHADOW_SECRET": secret,
        "CANARY_OPERATOR_SECRET": operator,
    }


def worker_account(settings: Settings) -> pwd.struct_passwd | None:
    """Who nginx's workers run as when the stack runs as root (`worker_user`, else the first of WORKER_USERS that
    exists); None when it does not run as root: the workers then run as its user (nginx ignores `user`)."""
    if os.geteuid() != 0:
        return None
    names = [settings.worker_user] if settings.worker_user else list(WORKER_USERS)
    for name in names:
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            continue
        if account.pw_uid == 0:
            raise CanaryError(f"worker_user {name} is root: nginx's workers need an unprivileged user")
        return account
    raise CanaryError(
        f"no user {' or '.join(names)} for nginx's workers (the stack runs as root): "
        "set CANARY_WORKER_USER to an unprivileged user"
    )


def worker_group(settings: Settings) -> int | None:
    """The group that the state folder, its logs and nginx-tmp folders are shared with (traverse only); None: the
    workers run as the stack's own user, and everything stays its own."""
    account = worker_account(settings)
    return None if account is None else account.pw_gid


def unreachable(folder: Path, account: pwd.struct_passwd) -> Path | None:
    """The first folder on the way to `folder` that `account` may not go through (mode bits, as the kernel checks
    them; ACLs are not read), or None: nginx's workers read the routing state in `folder` per request."""
    groups = {account.pw_gid} | {g.gr_gid for g in grp.getgrall() if account.pw_name in g.gr_mem}
    for way in (folder.absolute(), folder.resolve()):
        for parent in reversed(way.parents):
            found = parent.stat()
            if found.st_uid == account.pw_uid:
                bit = stat.S_IXUSR
            elif found.st_gid in groups:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not found.st_mode & bit:
                return parent
    return None


def check_reachable(settings: Settings) -> None:
    """Refuse, in one line, a state folder that nginx's workers (another user) cannot reach."""
    account = worker_account(settings)
    if account is None:
        return
    blocked = unreachable(settings.state_dir, account)
    if blocked is not None:
        raise CanaryError(
            f"nginx's workers run as {account.pw_name} (the stack runs as root) and cannot go through {blocked} "
            f"(mode {stat.S_IMODE(blocked.stat().st_mode):o}) to the state folder {settings.state_dir}: choose a "
            f"state folder they can reach (e.g. --state-dir /var/lib/canary), `chmod o+x {blocked}`, or set "
            "CANARY_WORKER_USER"
        )


def admin_socket(settings: Settings) -> Path:
    """The unix socket of nginx's admin server (the routing state it applies), in the state folder."""
    return _socket(settings, "nginx-admin.sock")


def shadow_socket(settings: Settings) -> Path:
    """The unix socket of nginx's shadow relay (it passes mirrored copies on to green), in the state folder."""
    return _socket(settings, "nginx-shadow.sock")


OPERATOR_URL = "http://canary"  # any host: the admin socket's server takes every name


def operator_transport(settings: Settings) -> httpx.HTTPTransport:
    """The operator's way into the local stack's nginx: its admin socket, which passes any request but its own on to
    the public server, marked as the operator's (pins apply, no per-client limit).

        with httpx.Client(transport=operator_transport(settings)) as client:
            client.post(f"{OPERATOR_URL}/predict", json=body, headers={settings.pin_header: "always"})
    """
    return httpx.HTTPTransport(uds=str(admin_socket(settings)))


def _socket(settings: Settings, name: str) -> Path:
    path = settings.state_dir / name
    if len(str(path)) > 100:  # sun_path holds 108 bytes
        raise CanaryError(f"the state folder's path is too long for nginx's unix sockets: {path}")
    return path


def njs_module(nginx_bin: str) -> Path:
    """The njs dynamic module of this nginx build (its --modules-path, else the usual folders)."""
    try:
        built = subprocess.run([nginx_bin, "-V"], capture_output=True, text=True, timeout=10).stderr
    except (OSError, subprocess.SubprocessError):
        built = ""
    found = re.search(r"--modules-path=(\S+)", built)
    folders = [Path(found.group(1))] if found else []
    folders += [Path(p) for p in ("/usr/lib/nginx/modules", "/usr/share/nginx/modules", "/etc/nginx/modules")]
    for folder in folders:
        if (folder / NJS_MODULE).is_file():
            return folder / NJS_MODULE
    raise CanaryError(
        "nginx's njs module is not installed (it reads the routing state): "
        "sudo apt-get install -y libnginx-mod-http-js (Debian/Ubuntu) or nginx-module-njs (nginx.org packages)"
    )


def open_files_limit() -> int:
    """Raise this process's open-files limit to its hard limit (at most MAX_NOFILE); children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def capped(limit: int) -> int:
        return MAX_NOFILE if limit == resource.RLIM_INFINITY else min(limit, MAX_NOFILE)

    if capped(soft) < capped(hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (capped(hard), hard))
            soft = capped(hard)
        except (ValueError, OSError):
            pass
    return capped(soft)


class LocalNginx:
    """The local stack's nginx: its config files in the state folder (the process settings, the routes), and the
    commands that act on them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.main_conf = settings.state_dir / "nginx.conf"
        self.routes_conf = settings.state_dir / ROUTES_TEMPLATES[0].removesuffix(TEMPLATE_SUFFIX)  # canary.conf
        self.pid_file = settings.state_dir / "nginx.pid"

    def render_main(self, nofile: int | None = None) -> str:
        """The process config: njs loaded once, and connections sized from the open-files limit."""
        nofile = nofile or open_files_limit()
        variables = {
            "CANARY_STATE_DIR": str(self.settings.state_dir),
            "CANARY_USER": self.worker_user(),
            "CANARY_ROUTES": str(self.routes_conf),
            "CANARY_NJS_MODULE": str(njs_module(self.settings.nginx_bin)),
            "CANARY_NOFILE": str(nofile),
            "CANARY_WORKER_CONNECTIONS": str(worker_connections(nofile)),
        }
        return render(read_template(LOCAL_MAIN_TEMPLATE, self.settings.project_dir), variables)

    def worker_user(self) -> str:
        """The `user` line: the unprivileged worker user when the stack runs as root, else the stack's own."""
        account = worker_account(self.settings)
        return (account or pwd.getpwuid(os.geteuid())).pw_name

    def render_routes(self, secret: str, operator: str) -> dict[Path, str]:
        """The routes' files, by where they go: canary.conf and the servers it includes, in the state folder."""
        variables = routes_variables(self.settings, secret, operator)
        templates = {name: read_template(name, self.settings.project_dir) for name in ROUTES_TEMPLATES}
        rendered = render_set(templates, variables)
        return {self.settings.state_dir / name.removesuffix(TEMPLATE_SUFFIX): text for name, text in rendered.items()}

    def write(self) -> None:
        """Before nginx starts: the private folders and logs, the config files (with new secrets), then check
        them. The workers, when they run as another user, go through the state folder, logs/ and nginx-tmp/ (0710,
        their group) to the routing state and their temporary files; the logs are opened by nginx's master."""
        s = self.settings
        group = worker_group(s)
        private_folder(s.state_dir, group)
        for sub in ("logs", "nginx-tmp"):
            (s.state_dir / sub).mkdir(mode=0o700, exist_ok=True)
            share(s.state_dir / sub, group, 0o710)
        for name in LOGS:
            os.close(os.open(s.state_dir / "logs" / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE))
            os.chmod(s.state_dir / "logs" / name, PRIVATE)  # also one an older version left readable
        for sock in (admin_socket(s), shadow_socket(s)):
            sock.unlink(missing_ok=True)  # left by an nginx that was killed: its bind() would fail
        write_atomic(self.main_conf, self.render_main(), mode=PRIVATE)
        for path, text in self.render_routes(secrets.token_hex(32), secrets.token_hex(32)).items():
            write_atomic(path, text, mode=PRIVATE)  # the relay's and the operator's secrets are in them
        self.test()

    def test(self) -> None:
        """`nginx -t` on the main config (which includes the routes); raise with nginx's words if it fails."""
        result = subprocess.run(
            [self.settings.nginx_bin, "-t", "-q", "-c", str(self.main_conf)], capture_output=True, text=True
        )
        if result.returncode != 0:
            reason = " ".join(line for line in result.stderr.splitlines() if "emerg" in line or "error" in line)
            raise CanaryError(f"nginx -t rejected the config: {reason or result.stderr.strip()}")

    def command(self) -> list[str]:
        return [self.settings.nginx_bin, "-c", str(self.main_conf)]


def worker_connections(nofile: int) -> int:
    """Connections per nginx worker within `nofile` open files (a few are logs and listening sockets)."""
    return max(256, min(16384, nofile - 64))
