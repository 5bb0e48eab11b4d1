"""Transaction flags of the KEMI app (kept by tm across request, reply, failure
and continue routes), and the message at hand as its route read it, shared by
kemi/app.py and its route mixins. No Kamailio."""

FL_REQ_SDP = 1        # the INVITE/UPDATE carried an offer, so replies carry answers
FL_TO_WS = 2          # the request goes to a WebRTC phone over its WebSocket
FL_MEDIA = 3          # rtpengine holds a session for this call
FL_FROM_WS = 4        # the request came from a WebRTC phone (so its replies go back there)
FL_PEER = 5           # relayed to the gateway node that holds the phone's connection
FL_AUTH_TRACK = 6     # a phone's request: the PBX's refusal of its credentials is counted
FL_TO_PBX = 7         # sent to a GW_PBX entry dispatcher chose (kemi/pbxroute.py fails it over)
FL_TO_PEER_PHONE = 8  # in-dialog, to a phone now on another node: media stays on this one


class Current:
    """The message at hand: its method (in a reply route, its request's) and whether
    it came over a WebSocket. kemi/app.py asks Kamailio once when a route begins
    (issue 14: a route used to ask the same up to ten times, ~1,000 instructions a
    question); the routes and their mixins read it from here."""
    __slots__ = ("method", "ws")

    def __init__(self) -> None:
        self.method = ""
        self.ws = False

    def begin(self, method: str, ws: bool) -> None:
        self.method = method
        self.ws = ws


current = Current()
