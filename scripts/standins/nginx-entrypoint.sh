#!/bin/sh
# Entrypoint of the local stand-in for the official nginx:1.27 image (scripts/container-e2e builds it when no
# registry can be reached). It reproduces what the project relies on from the official image's
# /docker-entrypoint.sh and 20-envsubst-on-templates.sh:
#   - every /etc/nginx/templates/**/*.template is rendered to /etc/nginx/conf.d/** (suffix dropped) by envsubst,
#     substituting only the environment variables whose names match the regex $NGINX_ENVSUBST_FILTER (all when
#     unset), so nginx's own $variables survive;
#   - NGINX_ENVSUBST_TEMPLATE_DIR / _TEMPLATE_SUFFIX / _OUTPUT_DIR are honoured, a read-only output dir is skipped;
#   - /docker-entrypoint.d/ in name order first, as in the official image: executable *.envsh files are sourced
#     (what they export reaches the templates), executable *.sh files are run;
#   - all of this only when the command is nginx or nginx-debug; then exec the command (default: nginx -g 'daemon off;').
set -eu

entrypoint_log() {
    if [ -z "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ]; then echo "$@"; fi
}

render_templates() {
    template_dir="${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}"
    suffix="${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}"
    output_dir="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"
    filter="${NGINX_ENVSUBST_FILTER:-}"

    [ -d "$template_dir" ] || return 0
    if [ ! -w "$output_dir" ]; then
        entrypoint_log "$0: ERROR: $template_dir exists, but $output_dir is not writable"
        return 0
    fi
    # "${NAME} ${OTHER} ...": the only names envsubst may replace.
    defined_envs=$(printf '${%s} ' $(awk "END { for (name in ENVIRON) { print ( name ~ /${filter}/ ) ? name : \"\" } }" </dev/null))
    find "$template_dir" -follow -type f -name "*$suffix" -print | while read -r template; do
        relative_path="${template#"$template_dir/"}"
        output_path="$output_dir/${relative_path%"$suffix"}"
        mkdir -p "$(dirname "$output_path")"
        entrypoint_log "$0: Running envsubst on $template to $output_path"
        envsubst "$defined_envs" <"$template" >"$output_path"
    done
}

if [ "${1:-}" = "nginx" ] || [ "${1:-}" = "nginx-debug" ]; then
    if [ -d /docker-entrypoint.d ]; then
        for script in /docker-entrypoint.d/*; do
            [ -f "$script" ] && [ -x "$script" ] || continue
            case "$script" in
                *.envsh) entrypoint_log "$0: Sourcing $script"; . "$script" ;;
                *.sh) entrypoint_log "$0: Launching $script"; "$script" ;;
            esac
        done
    fi
    render_templates
    entrypoint_log "$0: Configuration complete; ready for start up"
fi

exec "$@"
