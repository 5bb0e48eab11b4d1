from kemi import bindings
from kemi.bindings import Binding


def test_parse_contacts_jssip_style():
    hdr = ('<sip:k3v8a1@d9fj2k.invalid;transport=ws;alias=127.0.0.2~40001~5>;expires=600;'
           '+sip.ice;reg-id=1;+sip.instance="<urn:uuid:0d0b4d51-1d5e-4b5f-9a43-8b8e3b2a1c11>"')
    (c,) = bindings.parse_contacts(hdr)
    assert c.uri == "sip:k3v8a1@d9fj2k.invalid;transport=ws;alias=127.0.0.2~40001~5"
    assert c.expires == 600
    assert c.params["+sip.instance"] == "<urn:uuid:0d0b4d51-1d5e-4b5f-9a43-8b8e3b2a1c11>"


def test_parse_multiple_and_wildcard():
    cs = bindings.parse_contacts('"A, B" <sip:a@192.0.2.1>;expires=30, <sip:b@192.0.2.2>')
    assert [c.uri for c in cs] == ["sip:a@192.0.2.1", "sip:b@192.0.2.2"]
    assert bindings.parse_contacts("*")[0].uri == "*"


def test_granted_expiry_prefers_our_contact_param():
    ours = "sip:k3v8a1@d9fj2k.invalid;transport=ws"
    reply = ('<sip:other@192.0.2.9>;expires=100, '
             '<sip:k3v8a1@d9fj2k.invalid;transport=ws;alias=127.0.0.2~1~5>;expires=300')
    assert bindings.granted_expiry(reply, "3600", ours, 600) == 300


def test_granted_expiry_falls_back_to_expires_header():
    ours = "sip:u@h.invalid;transport=ws"
    assert bindings.granted_expiry("<sip:u@h.invalid;transport=ws>", "120", ours, 600) == 120


def test_granted_expiry_not_listed_means_gone():
    assert bindings.granted_expiry("<sip:x@y>;expires=60", None, "sip:u@h.invalid", 600) == 0


def test_requested_expiry():
    (c,) = bindings.parse_contacts("<sip:u@h>;expires=0")
    assert bindings.requested_expiry(c, "600") == 0
    (c,) = bindings.parse_contacts("<sip:u@h>")
    assert bindings.requested_expiry(c, "600") == 600
    assert bindings.requested_expiry(c, None) == bindings.DEFAULT_EXPIRES


def test_binding_round_trip_and_unknown_fields():
    b = Binding("1001", "sip:u@h.invalid;transport=ws", "sip:127.0.0.2:4000;transport=ws",
                "ws:127.0.0.1:8080", 7, "127.0.0.1:5070", expires=600)
    text = b.to_json()
    assert Binding.from_json(text) == b
    assert Binding.from_json(text.replace("{", '{"future_field":1,', 1)) == b


def test_key_and_user_validation():
    assert bindings.key("1001") == "gw:reg:1001"
    assert bindings.valid_user("agent.1001")
    assert not bindings.valid_user("")
    assert not bindings.valid_user("a b")
    assert not bindings.valid_user("x" * 65)


def test_source_uri():
    assert bindings.source_uri("127.0.0.2", 40000, "WS") == "sip:127.0.0.2:40000;transport=ws"
    assert bindings.source_uri("::1", 5, "ws") == "sip:[::1]:5;transport=ws"


# ------------------------------------------------ issue 14: the fast versions
def _split_top_reference(text: str, sep: str) -> list[str]:
    """The character-by-character splitter the fast one replaced."""
    out, buf, depth, quoted = [], [], 0, False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        if ch == sep and depth == 0 and not quoted:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    out.append("".join(buf))
    return [p.strip() for p in out if p.strip()]


def test_split_top_same_as_character_by_character():
    import random
    rng = random.Random(14)
    alphabet = 'ab ,;<>"=:@.'
    cases = ['<sip:a@b;transport=ws>;+sip.ice;reg-id=1;+sip.instance="<urn:uuid:1-2>";expires=600',
             '"A, B" <sip:1@x>, <sip:2@y;a=b,c>;q=0.5', "*", "", " , ,", '"unbalanced <sip:x>, y',
             "<sip:x", "a>b,c"]
    cases += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))) for _ in range(3000)]
    for text in cases:
        for sep in (",", ";"):
            assert bindings.split_top(text, sep) == _split_top_reference(text, sep), (text, sep)


def test_to_json_same_as_asdict_dumps():
    import json
    from dataclasses import asdict
    samples = [
        bindings.Binding("1001", "sip:a@b.invalid;transport=ws", "sip:127.0.0.2:5060;transport=ws",
                         "ws:127.0.0.1:8080", 7, "127.0.0.1:5070", 600, 1795582185.18, "c@d", "JsSIP 3.10",
                         '<urn:uuid:1>', "127.0.0.2"),
        bindings.Binding('we"ird\\', "sip:ü@x", "r\n", "s\t", -1, "n", 0, 0.0, "", "", "", "",
                         {"b": [1, 2], "a": {"z": None}}),
    ]
    for b in samples:
        assert b.to_json() == json.dumps(asdict(b), separators=(",", ":"), sort_keys=True)


def test_draft_record_is_the_finalized_binding():
    b = bindings.Binding("1001", "sip:a@b;x=\n", "sip:127.0.0.2:5060;transport=udp", "udp:127.0.0.1:5070",
                         -1, "127.0.0.1:5070", call_id="c", user_agent='UA "1"', src_ip="127.0.0.2")
    text = bindings.draft(b.user, b.instance, b.contact, b.record_parts())
    user, instance, contact, parts = bindings.read_draft(text)
    assert (user, instance, contact) == (b.user, b.instance, b.contact)
    assert bindings.record(parts, 600, now=1795582185.1804) == \
        bindings.finalize(b, 600, now=1795582185.1804).to_json()


def test_contact_index_json_as_asdict():
    import json
    from dataclasses import asdict
    from kemi.reconnect import ContactIndex
    for ci in (ContactIndex("1001", "sip:a@b.invalid;transport=ws", "<urn:uuid:1>"),
               ContactIndex('x"\\', "sip:ü@x\n", "")):
        assert ci.to_json() == json.dumps(asdict(ci), separators=(",", ":"), sort_keys=True)
        assert ContactIndex.from_json(ci.to_json()) == ci
