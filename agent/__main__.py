"""`python -m agent` from the repository root (what `make agent` ran before the
connector became an installable package): the same as `gateway-agent`."""
import sys

from gateway_agent.cli import main

sys.exit(main())
