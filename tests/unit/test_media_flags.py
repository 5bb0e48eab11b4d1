from kemi.media import Op, Side, flags


def toks(op, receiver, sender=None):
    return str(flags(op, receiver, sender)).split()


def test_toward_pbx_is_plain_rtp():
    t = toks(Op.OFFER, Side.PBX)
    assert "RTP/AVP" in t and "ICE=remove" in t and "DTLS=off" in t and "rtcp-mux-demux" in t
    assert "UDP/TLS/RTP/SAVPF" not in t and "ICE=force" not in t
    # A phone's SDP address is never trusted: it is behind NAT or *.invalid.
    assert "trust-address" not in t


def test_toward_phone_is_webrtc():
    t = toks(Op.OFFER, Side.PHONE)
    for token in ("UDP/TLS/RTP/SAVPF", "ICE=force", "rtcp-mux-require", "generate-mid", "SDES-off"):
        assert token in t
    assert "trust-address" in t  # the PBX's media address is authoritative


def test_phone_never_offered_or_answered_cn():
    for op in Op:
        assert "codec-strip=CN" in toks(op, Side.PHONE)


def test_pbx_offer_never_contains_cn():
    assert "codec-strip=CN" in toks(Op.OFFER, Side.PBX)


def test_answers_do_not_force_transport():
    # The answer's transport follows the offer; forcing it would break re-INVITEs.
    assert "RTP/AVP" not in toks(Op.ANSWER, Side.PBX)
    assert "UDP/TLS/RTP/SAVPF" not in toks(Op.ANSWER, Side.PHONE)


def test_plain_sip_phone_to_pbx_trusts_addresses():
    assert "trust-address" in toks(Op.OFFER, Side.PBX, Side.PBX)


def test_ng_params_mirror_module_parsing():
    from kemi.media import ng_params
    p = ng_params(flags(Op.OFFER, Side.PHONE))
    assert p["replace"] == ["origin", "session-connection"]
    assert p["ICE"] == "force" and p["transport-protocol"] == "UDP/TLS/RTP/SAVPF"
    assert p["rtcp-mux"] == ["require"] and p["SDES"] == ["off"]
    assert p["codec"] == {"strip": ["CN"]}
    assert "generate-mid" in p["flags"] and "trust-address" in p["flags"]
