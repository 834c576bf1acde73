"""`python -m pipeline` is `python -m pipeline.run`."""

from pipeline.cli import exit_process, main

exit_process(main())
