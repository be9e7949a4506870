"""The penguin classifier's own code: its input schema and limits, shared by training and serving.

The canary tool (`canary_kit`) never imports this package: it knows a model only through its settings.
"""
