"""`python -m gateway_agent`: the same as the `gateway-agent` command."""
import sys

from gateway_agent.cli import main

sys.exit(main())
