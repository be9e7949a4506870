"""Steering a running stack, on any stack (it knows one only through core.target.Target): the split and its change
log under one lock (control), a new version as green and the promotion of green to blue (release)."""
