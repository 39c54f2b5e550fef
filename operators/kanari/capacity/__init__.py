"""NeuronCore capacity: what a rollout step needs, what the cluster has free, and the plan that fits.

Pure functions over Kubernetes objects as plain dicts (Karpenter NodePools and NodeClaims, Nodes, Pods):
the controller fetches them, these modules decide. Nothing here talks to the API server.
"""
