"""The decision, pure: the rollout spec, the evidence a look reads and returns, the statistics, and the gates that
judge it (fixed windows and sequential confidence sequences). No clock, no process, no network: unit-tested on
recorded windows. It imports only core."""
