"""What every layer stands on: the settings (config), the one domain exception (errors), the service's endpoints
and metric names, the routing state nginx reads, the target interface a stack is known by (target.Target), and the
small readers of files, logs and processes. It imports nothing else of canary_kit."""
