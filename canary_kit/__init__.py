"""Canary deployments for any BentoML service behind nginx: split the traffic, judge the model, promote, roll back.

Its subpackages are its layers; each imports only from the layers below it, and those on one line import nothing of
each other (pyproject.toml `[tool.importlinter]` holds this, `lint-imports` checks it):

    cli                  the command line `canary` (python -m canary_kit)
    dashboard | stacks   the browser dashboard | the local and compose stacks, and their supervisor
    rollout | k8s        a rollout's step loop and run, shadow, report | the same canary rendered for Kubernetes
    steer                the split and its change log; deploy and finalize
    observe              figures, the access log's predictions, the ledger of answers and labels, views
    policy               the spec and the gates: the decision, pure
    core                 settings, errors, the routing state, the target interface, files, logs, processes
"""
