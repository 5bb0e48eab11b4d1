"""The agent's side of the gateway, as installed on an agent's desktop (the
`webrtc-gateway-agent` wheel): the WWE softphone-connector bridge and the JsSIP
web phone page it serves and drives (static/, built once at package time).

Run it as `gateway-agent` (cli.py); everything OS-specific lives in platforms/.
"""

__version__ = "0.1.0"
