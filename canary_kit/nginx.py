"""Render the committed nginx templates, check them with `nginx -t`, write them atomically, reload nginx.

Templates live in `nginx/`. Only `${CANARY_*}` placeholders are substituted, and every one must be given:
nginx's own `$variables` are never touched, and a forgotten placeholder is an error, not an empty string.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import httpx

from canary_kit.config import CanaryError, Settings

ROUTES_TEMPLATE = "canary.conf.template"
LOCAL_MAIN_TEMPLATE = "nginx.local.conf.template"
PLACEHOLDER = re.compile(r"\$\{(CANARY_[A-Z0-9_]+)\}")


def split_directive(green_weight: int) -> str:
    """The body of nginx's split_clients block for a green weight of 0-100 (nginx refuses a 0% entry)."""
    if not 0 <= green_weight <= 100:
        raise CanaryError(f"green weight must be between 0 and 100, got {green_weight}")
    return "* blue;" if green_weight == 0 else f"{green_weight}% green; * blue;"


SHADOW_LOCATION = "/_canary/shadow"


def mirror_directive(shadow: bool) -> str:
    """The argument of nginx's `mirror` for /predict: copies to green in shadow mode, none otherwise."""
    return SHADOW_LOCATION if shadow else "off"


def render(template: str, variables: dict[str, str]) -> str:
    """Substitute the named ${CANARY_*} placeholders; refuse missing or unexpected names."""
    wanted = set(PLACEHOLDER.findall(template))
    missing, unused = wanted - variables.keys(), variables.keys() - wanted
    if missing or unused:
        raise CanaryError(f"template variables do not match: missing {sorted(missing)}, unexpected {sorted(unused)}")
    return PLACEHOLDER.sub(lambda m: variables[m.group(1)], template)


def read_template(name: str, template_dir: Path) -> str:
    path = template_dir / name
    if not path.is_file():
        raise CanaryError(f"nginx template {path} not found")
    return path.read_text()


def routes_variables(settings: Settings, green_weight: int, shadow: bool = False) -> dict[str, str]:
    """The routing template's variables for the local stack: loopback backends, logs in the state folder."""
    return {
        "CANARY_BLUE_SERVER": f"127.0.0.1:{settings.blue_port}",
        "CANARY_GREEN_SERVER": f"127.0.0.1:{settings.green_port}",
        "CANARY_LISTEN": f"{settings.host}:{settings.port}",
        "CANARY_SPLIT": split_directive(green_weight),
        "CANARY_MIRROR": mirror_directive(shadow),
        "CANARY_ACCESS_LOG": str(settings.state_dir / "logs" / "access.log"),
    }


class LocalNginx:
    """The local stack's nginx: its two config files in the state folder, and the commands that act on them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.main_conf = settings.state_dir / "nginx.conf"
        self.routes_conf = settings.state_dir / "canary.conf"
        self.pid_file = settings.state_dir / "nginx.pid"
        self.templates = settings.project_dir / "nginx"

    def render_main(self, routes: Path | None = None) -> str:
        variables = {"CANARY_STATE_DIR": str(self.settings.state_dir), "CANARY_ROUTES": str(routes or self.routes_conf)}
        return render(read_template(LOCAL_MAIN_TEMPLATE, self.templates), variables)

    def render_routes(self, green_weight: int, shadow: bool = False) -> str:
        variables = routes_variables(self.settings, green_weight, shadow)
        return render(read_template(ROUTES_TEMPLATE, self.templates), variables)

    def write(self, green_weight: int) -> None:
        """First start: write both files (no running nginx to protect yet), then check them."""
        for sub in ("logs", "nginx-tmp"):
            (self.settings.state_dir / sub).mkdir(parents=True, exist_ok=True)
        write_atomic(self.main_conf, self.render_main())
        write_atomic(self.routes_conf, self.render_routes(green_weight))
        self.test()

    def routes(self) -> str:
        return self.routes_conf.read_text()

    def apply(self, routes: str) -> None:
        """Replace the running routes with `routes`: `nginx -t` on the candidate first, then swap and reload.

        The candidate is checked through a throw-away main config that includes it, so the live files change only
        after nginx accepted it, and then only by an atomic rename; a rejected candidate leaves them untouched.
        """
        candidate = self.settings.state_dir / "canary.conf.next"
        probe = self.settings.state_dir / "nginx.next.conf"
        try:
            write_atomic(candidate, routes)
            write_atomic(probe, self.render_main(candidate))
            self.test(probe)
            os.replace(candidate, self.routes_conf)
        finally:
            candidate.unlink(missing_ok=True)
            probe.unlink(missing_ok=True)
        self.reload()

    def running_split(self) -> str | None:
        """The routing the running nginx reports, read on a fresh connection; None if it does not answer."""
        try:
            response = httpx.get(f"http://{self.settings.host}:{self.settings.port}/_nginx/split", timeout=1)
        except httpx.HTTPError:
            return None
        return response.text.strip() if response.status_code == 200 else None

    def test(self, main_conf: Path | None = None) -> None:
        """`nginx -t` on the main config (which includes the routes); raise with nginx's words if it fails."""
        result = subprocess.run(
            [self.settings.nginx_bin, "-t", "-q", "-c", str(main_conf or self.main_conf)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            reason = " ".join(line for line in result.stderr.splitlines() if "emerg" in line or "error" in line)
            raise CanaryError(f"nginx -t rejected the config: {reason or result.stderr.strip()}")

    def command(self) -> list[str]:
        return [self.settings.nginx_bin, "-c", str(self.main_conf)]

    def reload(self) -> None:
        result = subprocess.run([*self.command(), "-s", "reload"], capture_output=True, text=True)
        if result.returncode != 0:
            raise CanaryError(f"nginx reload failed: {result.stderr.strip()}")


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder and rename it: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
