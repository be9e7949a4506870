"""The same canary on Kubernetes: the kustomize base for Argo Rollouts and Gateway API rendered from the rollout spec
(manifests), its gates as AnalysisTemplates (analysis), what it is made from (served), and the checks schemas miss
(checks)."""
