"""Kanari's KFP v2 components.

Lightweight Python components on Kanari's pipeline image (the Dockerfile's `pipeline` target: kfp,
boto3, torch CPU and the kanari/kfp_pipelines packages), so no step installs anything at run time.
The image is a compile-time setting (`kanari pipeline compile --image`, kfp_pipelines.pipeline
.compile_pipeline): the placeholder below is replaced in every executor of the compiled IR, and a
compile without an image is refused. The component functions only adapt KFP's inputs and
artifacts; the work is done by kfp_pipelines modules.
"""

COMPONENT_IMAGE = "kanari-pipelines:set-at-compile-time"
