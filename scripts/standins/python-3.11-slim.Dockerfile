# Local stand-in for the official python:3.11-slim image, built by scripts/container-e2e only when that image can
# be neither found nor pulled (no registry), and tagged python:3.11-slim so BentoML's unchanged generated
# Dockerfile (FROM python:3.11-slim) builds on it. Debian bookworm's python3 is 3.11, the same minor version.
# What the generated Dockerfile needs from its base, and what this provides:
#   - apt-get (Debian)                         -> build-essential, git, ca-certificates are apt-installed on top
#   - groupadd/useradd (passwd, in minbase)    -> the non-root bentoml user
#   - `pip install --require-hashes uv==…`     -> python3-pip, and no EXTERNALLY-MANAGED marker (PEP 668): the
#                                                 official image's pip installs into its Python freely
#   - `uv venv --python 3.11`                  -> /usr/bin/python3.11 (uv finds it; nothing is downloaded)
#   - uv/pip reaching PyPI through the proxy   -> SSL_CERT_FILE / PIP_CERT pointing at the host CA bundle
# Like the real image it has no curl: the Bento must bring its own (bentofile docker.system_packages).
FROM canary-e2e/bookworm-minbase:latest
COPY host-ca.crt /usr/local/share/canary-e2e/host-ca.crt
ENV SSL_CERT_FILE=/usr/local/share/canary-e2e/host-ca.crt \
    PIP_CERT=/usr/local/share/canary-e2e/host-ca.crt \
    CURL_CA_BUNDLE=/usr/local/share/canary-e2e/host-ca.crt \
    REQUESTS_CA_BUNDLE=/usr/local/share/canary-e2e/host-ca.crt \
    LANG=C.UTF-8 \
    PYTHON_VERSION=3.11
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-pip python3-venv python-is-python3 >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \
 && python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
LABEL io.canary-e2e.standin="python:3.11-slim" \
      org.opencontainers.image.description="local stand-in for python:3.11-slim (Debian bookworm python3), no registry"
CMD ["python3"]
