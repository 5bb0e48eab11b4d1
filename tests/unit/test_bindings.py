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
