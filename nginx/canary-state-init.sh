#!/bin/sh
# Compose only (mounted into /docker-entrypoint.d/, run by the nginx image before nginx starts): write the first
# routing state, green at $CANARY_GREEN_WEIGHT percent, blue and green serving $CANARY_BLUE_VERSION and
# $CANARY_GREEN_VERSION (the images' tags), unless a state is already there. A restarted stack keeps
# the last split; `canary … --compose` replaces the file from the host. The file is given to the owner of its
# folder, so that person can replace it without root.
set -eu
state=${CANARY_STATE_FILE:?}
weight=${CANARY_GREEN_WEIGHT:-10}
if [ -s "$state" ]; then
    echo "$0: keeping the routing state in $state"
    exit 0
fi
case $weight in
    '' | *[!0-9]*) echo "$0: CANARY_GREEN_WEIGHT must be a whole number from 0 to 100, got '$weight'" >&2; exit 1 ;;
esac
if [ "$weight" -gt 100 ]; then
    echo "$0: CANARY_GREEN_WEIGHT must be a whole number from 0 to 100, got '$weight'" >&2
    exit 1
fi
version() { # a version tag as JSON: "v1.2.0", or null when it does not look like one
    case $1 in
        v[0-9]*.[0-9]*.[0-9]*) printf '"%s"' "$1" ;;
        *) printf 'null' ;;
    esac
}
folder=$(dirname "$state")
tmp="$folder/.routing.init.$$"
printf '{"green_weight": %d, "shadow": false, "green_slot": "green_a", "blue_version": %s, "green_version": %s, "serial": 1, "changed_at": "%s"}\n' \
    "$weight" "$(version "${CANARY_BLUE_VERSION:-}")" "$(version "${CANARY_GREEN_VERSION:-}")" \
    "$(date -u +%Y-%m-%dT%H:%M:%S+00:00)" >"$tmp"
chmod 644 "$tmp"
chown "$(stat -c %u:%g "$folder")" "$tmp" 2>/dev/null || true
mv "$tmp" "$state"
echo "$0: wrote the first routing state to $state (green $weight%)"
