"""`python -m pipeline` is `python -m pipeline.run`."""

from pipeline.run import exit_process, main

exit_process(main())
