"""The operator-test harness lives in devstack (shared with the benchmarks and the demo's API stand-in);
this module keeps the tests' imports short."""

from devstack.apiserver import (
    ISVC,
    MD,
    PROMETHEUS_RULE,
    TEST_AGENT,
    ApiServer,
    Call,
    write_kubeconfig,
)
from devstack.operator_harness import (
    CRD_FILES,
    ROOT,
    UPSTREAM,
    Cluster,
    KServe,
    Kube,
    Operator,
    condition,
    operator_env,
    permissions,
    wait_for,
)

__all__ = [
    "CRD_FILES", "ISVC", "MD", "PROMETHEUS_RULE", "ROOT", "TEST_AGENT", "UPSTREAM", "ApiServer", "Call", "Cluster",
    "KServe", "Kube", "Operator", "condition", "operator_env", "permissions", "wait_for", "write_kubeconfig",
]
