"""Experiment: which rtpengine ng flags keep comfort noise (RTP PT 13) away from the WebRTC phone.

rtpengine forwards RTP packets whose payload type has no codec handler unchanged, so
stripping CN from the SDP alone does not stop a PBX that sends PT 13 during silence.
It starts its own userspace rtpengine on free loopback ports, runs a set of
flag variants through offer/answer for both call directions, plays RTP from a fake PBX
and a fake phone, and prints what arrived on each side, per payload type.

Call shapes:
  A    phone offers, PBX answers with PCMU + CN 13 + telephone-event
  A-C  phone offers, PBX answers PCMU + telephone-event only, but still sends PT 13
  A-nophcn  like A, but the phone's offer has no CN (Firefox-like)
  B    PBX offers PCMU, PCMA, CN 13, telephone-event 101
  B-C  PBX offers PCMU, PCMA, telephone-event 101 (no 13) but still sends PT 13
  A+reB, B+reA, ...  the first exchange, then a re-INVITE offered by phone (reA) or PBX (reB)
  *-inj  like *-C, but the PBX SDP handed to rtpengine has "13 CN/8000" injected by the
         gateway before the rtpengine call (the PBX itself never offered/answered it)

Flags are written in Kamailio rtpengine-module syntax and converted to ng dictionaries
by kemi.media.ng_params, the gateway's own conversion (as Kamailio 5.6's rtpengine
module, src/modules/rtpengine/rtpengine.c parse_flags, builds them).

The media test uses plain RTP/AVP on the phone leg too, so packets can be read directly;
--webrtc-sdp repeats the signalling with real WebRTC SDP (UDP/TLS/RTP/SAVPF, ICE, DTLS,
rtcp-mux) and --dtls runs calls whose phone leg is a real aiortc peer (ICE + DTLS-SRTP).

Result on rtpengine 10.5.3.5 (table in bench/experiments/README.md): only the variants
"full+transcode" and "full-g711+transcode" keep PT 13 away from the phone (they engage the
transcoding engine, PCMU->PCMU, which is byte-exact except for the mu-law negative zero
0x7F -> 0xFF); the gateway uses full+transcode's flags (kemi/media.py). Shape B-C cannot be fixed by flags: a PT the
PBX's SDP never declared has no codec handler and is always forwarded as is; only the
"-inj" SDP fix helps there.

Usage (from the repository root; results and their story in bench/experiments/README.md):
  .venv/bin/python -m bench.experiments.cn                 # packet table, all variants
  .venv/bin/python -m bench.experiments.cn --variants strip,full-g711+transcode
  .venv/bin/python -m bench.experiments.cn --shapes A,B-C --show-sdp
  .venv/bin/python -m bench.experiments.cn --skip-media --webrtc-sdp --dtls
  .venv/bin/python -m bench.experiments.cn --cpu --variants strip,full-g711+transcode
                                            # CPU cost, 20 calls x 50 pps each way x 10 s
  CN_EXP_LOGLEVEL=7 ... --keep-log          # keep rtpengine debug log

Only loopback addresses are used. It only ever signals the rtpengine process it
started itself.
"""
