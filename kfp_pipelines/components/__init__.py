"""Kanari's KFP v2 components.

Lightweight Python components on Kanari's pipeline image (kfp, boto3, the kanari and kfp_pipelines
packages installed), so no step installs anything at run time. The component functions only adapt
KFP's inputs and artifacts; the work is done by kfp_pipelines modules.
"""

from importlib.metadata import version

COMPONENT_IMAGE = f"ghcr.io/kanari-dev/kanari-pipelines:{version('kanari')}"
