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


def test_cn_from_the_pbx_is_consumed_not_relayed():
    # rtpengine relays a payload type it has no codec for untouched: PT 13 from
    # the PBX must meet a CN codec of rtpengine's own, never the phone.
    assert "codec-consume-CN" in toks(Op.OFFER, Side.PHONE)
    t = toks(Op.OFFER, Side.PBX)
    assert "codec-transcode=CN" in t
    # the phone's own CN is stripped for good ("full"), so no answer returns it
    assert "codec-strip=full" in t and "codec-except=CN" not in t
    for codec in ("opus", "G722", "PCMU", "PCMA", "telephone-event"):
        assert f"codec-except={codec}" in t


def test_answers_carry_no_codec_flags():
    # codec-strip=CN in an answer to the phone would drop the PBX's CN instead
    # of turning it into comfort noise; the SDP has no CN toward the phone anyway.
    for receiver in Side:
        assert not [t for t in toks(Op.ANSWER, receiver) if t.startswith(("codec-", "transcode"))]


def test_declare_cn_on_pbx_sdp():
    from kemi.media import declare_cn
    sdp = ("v=0\r\no=pbx 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
           "m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
           "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n")
    out = declare_cn(sdp)
    assert "m=audio 4000 RTP/AVP 0 101 13\r\n" in out
    assert "a=rtpmap:101 telephone-event/8000\r\na=rtpmap:13 CN/8000\r\n" in out
    assert out.endswith("a=sendrecv\r\n")
    assert declare_cn(out) == out                         # already declared: unchanged
    no_map = sdp.replace("a=rtpmap:0 PCMU/8000\r\n", "").replace(" 0 101", " 0")
    assert "m=audio 4000 RTP/AVP 0 13\r\n" in declare_cn(no_map)
    assert "a=rtpmap:13 CN/8000" in declare_cn(no_map)
    for untouched in (sdp.replace("m=audio 4000", "m=audio 0"),                 # rejected stream
                      sdp.replace(" 0 101", " 96").replace("0 PCMU/8000", "96 opus/48000/2"),
                      sdp.replace("RTP/AVP", "UDP/TLS/RTP/SAVPF"), ""):
        assert declare_cn(untouched) == untouched


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
    assert "codec" not in p
    assert "generate-mid" in p["flags"] and "trust-address" in p["flags"]
    assert "codec-consume-CN" in p["flags"]
    q = ng_params(flags(Op.OFFER, Side.PBX))
    assert q["codec"] == {"strip": ["full"], "except": ["opus", "G722", "PCMU", "PCMA", "telephone-event"],
                          "transcode": ["CN"]}


# ------------------------------------------------------------------ CN filter path
def test_with_the_filter_cn_is_only_stripped_never_transcoded():
    """CnBlock.FILTER (nftables drops PT 13 in front of rtpengine): every offer
    strips CN so neither side negotiates it, and nothing engages the transcoder
    (no transcode/consume/mask, no full strip with its except list)."""
    from kemi.media import CnBlock
    for receiver in Side:
        for sender in Side:
            offer = str(flags(Op.OFFER, receiver, sender, CnBlock.FILTER)).split()
            assert [t for t in offer if t.startswith("codec-")] == ["codec-strip=CN"], offer
            answer = str(flags(Op.ANSWER, receiver, sender, CnBlock.FILTER)).split()
            assert not [t for t in answer if t.startswith(("codec-", "transcode"))], answer
            # everything else is the same as on the transcoder path
            plain = [t for t in toks(Op.OFFER, receiver, sender) if not t.startswith("codec-")]
            assert [t for t in offer if not t.startswith("codec-")] == plain


def test_cn_declared_for_rtpengine_only_on_the_transcoder_path():
    from kemi.media import CnBlock, declare_cn, rtpengine_sdp
    sdp = ("v=0\r\no=pbx 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
           "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    assert rtpengine_sdp(sdp, Side.PBX) == declare_cn(sdp) != sdp          # default: transcoder
    assert rtpengine_sdp(sdp, Side.PBX, CnBlock.TRANSCODE) == declare_cn(sdp)
    assert rtpengine_sdp(sdp, Side.PBX, CnBlock.FILTER) == sdp
    assert rtpengine_sdp(sdp, Side.PHONE, CnBlock.TRANSCODE) == sdp


def _declare_cn_reference(sdp: str) -> str:
    """declare_cn as it was, line by line (issue 14 made it work on sections)."""
    from kemi.media import _with_cn
    if "m=audio" not in sdp:
        return sdp
    eol = "\r\n" if "\r\n" in sdp else "\n"
    out: list[str] = []
    section: list[str] = []
    for line in sdp.split(eol):
        if line.startswith("m="):
            out.extend(_with_cn(section))
            section.clear()
        section.append(line)
    out.extend(_with_cn(section))
    return eol.join(out)


def test_declare_cn_same_as_line_by_line():
    import random
    from pathlib import Path
    from kemi.media import declare_cn
    rng = random.Random(14)
    pool = ["v=0", "o=pbx 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0", "b=AS:64",
            "m=audio 4000 RTP/AVP 0 101", "m=audio 4000 RTP/AVP 8", "m=audio 0 RTP/AVP 0",
            "m=audio 4000 RTP/AVP 9 13", "m=audio 4000 UDP/TLS/RTP/SAVPF 111 0", "m=video 5000 RTP/AVP 96",
            "m=audio 4000 RTP/AVP 96 97", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:101 telephone-event/8000", "a=rtpmap:96 opus/48000/2", "a=rtpmap:97 G729/8000",
            "a=rtpmap:13 CN/8000", "a=rtpmap:98 cn/8000", "a=rtpmap:9", "a=rtpmap:9 G722/8000",
            "a=fmtp:101 0-16", "a=sendrecv", "a=ptime:20", ""]
    cases = [p.read_text() for p in (Path(__file__).resolve().parents[1] / "golden").glob("*.sdp")]
    for _ in range(4000):
        lines = [rng.choice(pool) for _ in range(rng.randrange(1, 14))]
        eol = rng.choice(["\r\n", "\n"])
        cases.append(eol.join(lines) + rng.choice(["", eol]))
    for sdp in cases:
        assert declare_cn(sdp) == _declare_cn_reference(sdp), repr(sdp)


def test_flag_text_is_flags():
    from kemi.media import CnBlock, Op, Side, flag_text, flags
    for cn in CnBlock:
        for op in Op:
            for to in Side:
                for frm in Side:
                    assert flag_text(op is Op.OFFER, to is Side.PHONE, frm is Side.PHONE, cn) == \
                        str(flags(op, to, frm, cn))
