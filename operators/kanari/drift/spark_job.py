"""Entry point of the pipeline's Spark baseline job: SageMaker's smspark-submit runs this file on the Spark
baseline image (the Dockerfile's spark-baseline target copies it to /opt/kanari/spark_job.py) with the job's
ContainerArguments, which are `kanari drift baseline --engine spark`'s (see kfp_pipelines/sagemaker/processing.py).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from kanari.cli.main import main as kanari

    return kanari(["drift", "baseline", "--engine", "spark", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
