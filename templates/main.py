"""Flex Template entry point: the launcher runs `python main.py --NAME=VALUE ...` and this submits the job.

The parameters are pipeline.options.EmbeddingOptions (see metadata.json) plus whatever Beam/Dataflow options the
launcher adds (--runner, --project, --region, --temp_location, --sdk_container_image, ...). It returns as soon as
Dataflow has the job: pipeline.run.run waits for local runners only, and a template launch must not block.
"""

from __future__ import annotations

import logging
import sys

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import run as pipeline_run
from pipeline.options import EmbeddingOptions, option_actions

__all__ = ["to_pipeline_args", "launch", "main"]


def _flags() -> set[str]:
    """The on/off options (store_true), which the command line takes bare but templates pass as =true/=false."""
    return {action.option_strings[0] for action in option_actions() if action.nargs == 0 and action.const is True}


def to_pipeline_args(template_args: list[str]) -> list[str]:
    """Template parameters as the pipeline's command line: --normalize=true -> --normalize, =false -> nothing.

    Adds --runner=DataflowRunner unless a runner is named: a template always runs on Dataflow.
    """
    flags = _flags()
    args = []
    for arg in template_args:
        name, equals, value = arg.partition("=")
        if equals and name in flags:
            if value.strip().lower() not in ("true", "false"):
                raise ValueError(f"{name} takes true or false, not {value!r}.")
            if value.strip().lower() == "true":
                args.append(name)
            continue
        args.append(arg)
    if not any(arg == "--runner" or arg.startswith("--runner=") for arg in args):
        args.append("--runner=DataflowRunner")
    return args


def launch(template_args: list[str]):
    """Builds the pipeline from template parameters and submits it; returns without waiting for the job."""
    args = to_pipeline_args(template_args)
    options = PipelineOptions(args).view_as(EmbeddingOptions)
    if not (options.model_dir or (options.encoder and options.preprocessor)):
        raise ValueError("The template reads its models from Cloud Storage: pass model_dir=gs://... (or both "
                         "encoder and preprocessor); workers do not download models from the internet.")
    result = pipeline_run.run(args, strict=False)
    logging.info("Submitted; the job runs on without this launcher.")
    return result


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        launch(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        logging.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
