# Local stand-in for the official nginx:1.27 image, built by scripts/container-e2e only when that image can be
# neither found nor pulled (no registry). Debian bookworm's nginx (1.22: every directive the canary template uses
# exists there) with its njs module (libnginx-mod-http-js, at /usr/lib/nginx/modules/ as in the official image),
# curl for the compose health check, envsubst (gettext-base) for the template feature, and an `nginx` user, as
# the official image has, for nginx.compose.conf's `user nginx;`.
# The build context holds host-ca.crt (the host's CA bundle, copied at build time, never committed) so that curl
# inside trusts a TLS-inspecting proxy, as the real image would trust the public CAs.
FROM canary-e2e/bookworm-minbase:latest
COPY host-ca.crt /usr/local/share/canary-e2e/host-ca.crt
ENV SSL_CERT_FILE=/usr/local/share/canary-e2e/host-ca.crt \
    PIP_CERT=/usr/local/share/canary-e2e/host-ca.crt \
    CURL_CA_BUNDLE=/usr/local/share/canary-e2e/host-ca.crt \
    NGINX_VERSION=debian-bookworm
# Debian's default site (listen 80 default_server, in sites-enabled/) is not in the official image: dropped.
# As in the official image, the logs go to the container's stdout/stderr, and templates and hooks have folders.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx libnginx-mod-http-js curl gettext-base >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && rm -f /etc/nginx/sites-enabled/default \
 && useradd --system --no-create-home --user-group --shell /usr/sbin/nologin nginx \
 && ln -sf /dev/stdout /var/log/nginx/access.log \
 && ln -sf /dev/stderr /var/log/nginx/error.log \
 && mkdir -p /docker-entrypoint.d /etc/nginx/templates /etc/nginx/conf.d \
 && nginx -t
COPY nginx-entrypoint.sh /docker-entrypoint.sh
LABEL io.canary-e2e.standin="nginx:1.27" \
      org.opencontainers.image.description="local stand-in for nginx:1.27 (Debian bookworm nginx), no registry"
EXPOSE 80
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/docker-entrypoint.sh"]
CMD ["nginx", "-g", "daemon off;"]
