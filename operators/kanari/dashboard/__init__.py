"""`kanari dashboard`: a live web view of ModelDeployments, their analysis, drift and lineage.

Everything it shows is read with the user's own Kubernetes credentials (kubeconfig, or in the cluster a
token the user pastes), so it can show and do nothing the user could not with kubectl.
"""
