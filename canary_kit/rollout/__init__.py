"""A rollout: the step loop on an injected clock and plant (driver), its run on a live stack (run), the shadow phase,
the running rollout's files that others read and steer (live), and its report."""
