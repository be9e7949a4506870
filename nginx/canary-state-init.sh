#!/bin/sh
# Compose only (mounted into /docker-entrypoint.d/, run by the nginx image before nginx starts): write the first
# routing state, green at $CANARY_GREEN_WEIGHT percent, naming the versions blue and green answer with (their
# X-Model-Version; nginx starts once both are healthy), unless a state is already there. A restarted stack keeps
# the last split; `canary … --compose` replaces the file from the host. The file is given to the owner of its
# folder, so that person can replace it without root. The versions are asked, not passed in the environment:
# a changed environment would make `docker compose up` recreate nginx, dropping every client's connection.
set -eu
state=${CANARY_STATE_FILE:?}
weight=${CANARY_GREEN_WEIGHT:-10}
if [ -s "$state" ]; then
    echo "$0: keeping the routing state in $state"
    exit 0
fi
# Digits only, read as decimal (printf and test would read 010 as octal, or fail on a number too large for them).
refuse() { echo "$0: CANARY_GREEN_WEIGHT must be a whole number from 0 to 100, got '$given'" >&2; exit 1; }
given=$weight
while [ "${#weight}" -gt 1 ] && [ "${weight#0}" != "$weight" ]; do weight=${weight#0}; done
case $weight in
    '' | *[!0-9]* | ????*) refuse ;;
esac
[ "$weight" -le 100 ] || refuse
served() { # the version the backend at $1 answers with, as JSON: "v1.2.0", or null (canary_kit/core/readyz.py's rule:
    # the first X-Model-Version of a 200 answer to /readyz, spaces and tabs around it dropped, if it is a version
    # as BentoML accepts one in a tag, other than `latest`)
    curl -sS -m 3 -o /dev/null -D - "http://$1/readyz" 2>/dev/null | tr -d '\r' | awk '
        /^HTTP\// { status = $2; found = 0; version = ""; next }
        !found && tolower(substr($0, 1, index($0, ":") - 1)) == "x-model-version" {
            version = substr($0, index($0, ":") + 1); gsub(/^[ \t]+|[ \t]+$/, "", version); found = 1
        }
        END {
            ok = version ~ /^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$/ && length(version) <= 63 && version != "latest"
            if (status == "200" && ok) printf "\"%s\"", version; else printf "null"
        }'
}
# Both versions, or neither (then `canary` asks the stack later). One alone would be read as "green is free" and
# send green's share to blue: ask the silent one again for 10 s, then give up without writing (the container
# restarts and tries again).
blue=$(served "${CANARY_BLUE_SERVER:?}")
green=$(served "${CANARY_GREEN_SERVER:?}")
one_alone() { [ "$blue" = null ] && [ "$green" != null ] || { [ "$blue" != null ] && [ "$green" = null ]; }; }
tries=0
while one_alone; do
    tries=$((tries + 1))
    if [ "$tries" -gt 10 ]; then
        echo "$0: only one of blue and green says its version (blue $blue, green $green); not writing a state" >&2
        exit 1
    fi
    sleep 1
    if [ "$blue" = null ]; then blue=$(served "$CANARY_BLUE_SERVER"); fi
    if [ "$green" = null ]; then green=$(served "$CANARY_GREEN_SERVER"); fi
done
folder=$(dirname "$state")
tmp="$folder/.routing.init.$$"
printf '{"green_weight": %d, "shadow": false, "green_slot": "green_a", "blue_version": %s, "green_version": %s, "serial": 1, "changed_at": "%s"}\n' \
    "$weight" "$blue" "$green" \
    "$(date -u +%Y-%m-%dT%H:%M:%S+00:00)" >"$tmp"
chmod 644 "$tmp"
chown "$(stat -c %u:%g "$folder")" "$tmp" 2>/dev/null || true
mv "$tmp" "$state"
echo "$0: wrote the first routing state to $state (green $weight%)"
