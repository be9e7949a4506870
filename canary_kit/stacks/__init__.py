"""The stacks the kit runs and steers: the local one (real `bentoml serve` processes and nginx: local, backends,
nginx, supervise), docker compose, each opened as a core.target.Target (targets); and asking a running service what
it serves (probe, discover: `canary init`)."""
