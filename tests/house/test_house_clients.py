"""One client factory each: every AWS client honours AWS_REGION and AWS_ENDPOINT_URL, and every Kubernetes
connection reads the kubeconfig as kubectl does."""

from __future__ import annotations

import pytest
import yaml
from kanari import awsclient, kubeclient
from kanari.controller.model_source import sagemaker_client

from kfp_pipelines import aws


@pytest.fixture
def aws_env(monkeypatch):
    for key in ("AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")


@pytest.mark.parametrize("make", [
    lambda: awsclient.client("s3"),
    lambda: sagemaker_client(),
    lambda: aws.client("sagemaker"),
], ids=["awsclient", "controller", "pipeline"])
def test_every_aws_client_honours_aws_region_and_the_endpoint(aws_env, make):
    client = make()
    assert client.meta.region_name == "eu-west-3"
    assert client.meta.endpoint_url == "http://127.0.0.1:4566"


def test_an_explicit_region_wins_and_an_arn_names_its_own(aws_env):
    assert awsclient.client("sagemaker", region_name="us-west-2").meta.region_name == "us-west-2"
    assert awsclient.region_of_arn("arn:aws:sagemaker:ap-south-1:123456789012:model-package/g/1") == "ap-south-1"
    assert awsclient.region_of_arn("arn:aws:s3:::bucket") is None and awsclient.region_of_arn("nonsense") is None


def _kubeconfig(path, contexts):
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": contexts[0][0],
        "clusters": [{"name": n, "cluster": {"server": f"https://{n}.example:6443"}} for n, _ in contexts],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": n, "context": {"cluster": n, "user": "u", **({"namespace": ns} if ns else {})}}
                     for n, ns in contexts],
    }))
    return path


def test_kubeconfig_like_kubectl(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv(kubeclient.CONTEXT_ENV, raising=False)
    a = _kubeconfig(tmp_path / "a", [("prod", "ml-prod"), ("dev", None)])
    b = _kubeconfig(tmp_path / "b", [("staging", "ml-staging")])
    monkeypatch.setenv("KUBECONFIG", f"{a}:{b}")  # a list, merged in order
    conn = kubeclient.connect()
    assert (conn.context, conn.namespace) == ("prod", "ml-prod")
    assert conn.api_client.configuration.host == "https://prod.example:6443"
    assert kubeclient.connect(context="staging").namespace == "ml-staging"
    assert kubeclient.connect(context="dev").namespace == "default"
    assert kubeclient.connect(kubeconfig=str(b)).context == "staging"  # --kubeconfig over KUBECONFIG
    with pytest.raises(kubeclient.KubeConfigError, match="context 'nope' not found"):
        kubeclient.connect(context="nope")
    with pytest.raises(kubeclient.KubeConfigError, match="no kubeconfig at"):
        kubeclient.connect(kubeconfig=str(tmp_path / "missing"))
