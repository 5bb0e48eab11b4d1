"""Transaction flags of the KEMI app (kept by tm across request, reply, failure
and continue routes), shared by kemi/app.py and its route mixins. No Kamailio."""

FL_REQ_SDP = 1        # the INVITE/UPDATE carried an offer, so replies carry answers
FL_TO_WS = 2          # the request goes to a WebRTC phone over its WebSocket
FL_MEDIA = 3          # rtpengine holds a session for this call
FL_FROM_WS = 4        # the request came from a WebRTC phone (so its replies go back there)
FL_PEER = 5           # relayed to the gateway node that holds the phone's connection
FL_AUTH_TRACK = 6     # a phone's request: the PBX's refusal of its credentials is counted
FL_TO_PBX = 7         # sent to a GW_PBX entry dispatcher chose (kemi/pbxroute.py fails it over)
FL_TO_PEER_PHONE = 8  # in-dialog, to a phone now on another node: media stays on this one
