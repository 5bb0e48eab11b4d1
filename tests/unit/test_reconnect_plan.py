"""The reconnect decisions (kemi/reconnect.py): which binding is the phone's,
where an in-dialog request goes, when a waiting request goes on."""
from __future__ import annotations

import pytest

from kemi.bindings import Binding
from kemi.reconnect import (Action, ContactIndex, Waiter, contact_key, dialog_conid, due,
                            from_phone_side, peer_hop, plan, same_address, same_phone,
                            transaction_id, verdict)

CONTACT = "sip:k3v8a1@d9fj2k.invalid;transport=ws"
INSTANCE = "<urn:uuid:0d0b4d51-1d5e-4b5f-9a43-8b8e3b2a1c11>"
NODE_A, NODE_B = "127.0.0.1:5070", "127.0.0.2:5070"
OLD = "sip:127.0.0.1:40001;transport=ws"
NEW = "sip:127.0.0.1:40002;transport=ws"


def phone(contact=CONTACT, instance=INSTANCE, received=NEW, conid=8, node=NODE_A) -> Binding:
    return Binding("1001", contact, received, "ws:127.0.0.1:8080", conid, node, instance=instance)


def alive(*conids):
    return lambda c: c in conids


def test_contact_key_ignores_parameters_and_case():
    key = contact_key(CONTACT)
    assert key.startswith("gw:contact:") and len(key) == len("gw:contact:") + 32
    assert contact_key("SIP:K3V8A1@D9FJ2K.invalid;transport=ws;alias=127.0.0.1~40001~5") == key
    assert contact_key("sip:other@d9fj2k.invalid;transport=ws") != key


def test_index_round_trip():
    entry = ContactIndex.of(phone())
    assert ContactIndex.from_json(entry.to_json()) == entry == ContactIndex("1001", CONTACT, INSTANCE)


def test_same_phone_by_contact_or_instance_never_another():
    index = ContactIndex("1001", CONTACT, INSTANCE)
    ruri = CONTACT.replace(";transport=ws", ";transport=ws;alias=127.0.0.1~40001~5")
    assert same_phone(phone(), index, ruri)
    # The page came back with a new Contact but the same +sip.instance.
    assert same_phone(phone(contact="sip:new@x.invalid;transport=ws"), index, CONTACT)
    # Another browser registered the DN later: its own Contact and instance.
    other = phone(contact="sip:zz@y.invalid;transport=ws", instance="<urn:uuid:other>")
    assert not same_phone(other, index, CONTACT)
    assert not same_phone(phone(contact="sip:zz@y.invalid", instance=""),
                          ContactIndex("1001", CONTACT, ""), CONTACT)
    assert not same_phone(None, index, CONTACT) and not same_phone(phone(), None, CONTACT)
    # An index entry for another Contact (a hash collision) is never used.
    assert not same_phone(phone(), ContactIndex("1001", "sip:x@y", INSTANCE), CONTACT)


ROUTES = ("<sip:127.0.0.1:5070;r2=on;lr;ftag=a1;gwcid=7>,"
          "<sip:127.0.0.1:8080;transport=ws;r2=on;lr;ftag=a1;gwcid=7>")
PHONE_ROUTES = ("<sip:127.0.0.2:8080;transport=ws;r2=on;lr;ftag=a1;gwcid=7>, "
                "<sip:127.0.0.2:5070;r2=on;lr;ftag=a1;gwcid=7>")


def test_dialog_conid_and_route_sides():
    assert dialog_conid(ROUTES) == 7
    assert dialog_conid("<sip:127.0.0.1:5070;lr>") is None and dialog_conid("") is None
    assert not from_phone_side(ROUTES) and from_phone_side(PHONE_ROUTES)
    assert peer_hop(PHONE_ROUTES) == "sip:127.0.0.2:5070;r2=on;lr;ftag=a1;gwcid=7"
    assert peer_hop(ROUTES) is None and peer_hop("<sip:h:1;transport=ws;lr>") is None


def test_same_address():
    assert same_address("sip:127.0.0.1:40001;transport=WS", "sip:127.0.0.1:40001;transport=ws;lr")
    assert not same_address(OLD, NEW) and not same_address(OLD, "")
    assert not same_address(OLD, "sip:127.0.0.1:40001;transport=tcp")
    assert same_address("sip:[::1]:5;transport=ws", "sip:[::1]:5;transport=ws")


def test_plan_moves_to_the_new_connection_of_this_node():
    p = plan(phone(), node=NODE_A, target=OLD, conid=7, alive=alive(8))
    assert (p.action, p.from_conid, p.to_conid, p.dst) == (Action.MOVE, 7, 8, NEW)


def test_plan_keeps_the_dialogs_connection_when_it_is_the_current_one():
    p = plan(phone(conid=7, received=OLD), node=NODE_A, target=OLD, conid=7, alive=alive(7))
    assert (p.action, p.dst) == (Action.KEEP, OLD)
    # Without gwcid (a dialog older than it), the address tells.
    p = plan(phone(conid=7, received=OLD), node=NODE_A, target=OLD, conid=None, alive=alive(7))
    assert (p.action, p.from_conid) == (Action.KEEP, 7)
    p = plan(phone(), node=NODE_A, target=OLD, conid=None, alive=alive(8))
    assert (p.action, p.from_conid, p.dst) == (Action.MOVE, 0, NEW)


def test_plan_waits_while_the_phones_connection_is_gone():
    p = plan(phone(conid=7, received=OLD), node=NODE_A, target=OLD, conid=7, alive=alive())
    assert (p.action, p.from_conid) == (Action.WAIT, 7)
    # A new registration whose connection is gone again: wait for the next one.
    assert plan(phone(), node=NODE_A, target=OLD, conid=7, alive=alive()).action is Action.WAIT


def test_plan_hands_over_to_the_node_holding_the_phone_once():
    p = plan(phone(node=NODE_B), node=NODE_A, target=OLD, conid=7, alive=alive())
    assert (p.action, p.from_conid, p.to_conid, p.dst) == (Action.PEER, 7, 8, f"sip:{NODE_B};transport=udp")
    # A request handed over to us is never handed back.
    p = plan(phone(node=NODE_B), node=NODE_A, target="", conid=None, alive=alive(), may_hand_over=False)
    assert p.action is Action.WAIT
    # On the node holding the phone, a handed-over request (no alias, no gwcid) is delivered.
    p = plan(phone(node=NODE_B), node=NODE_B, target="", conid=None, alive=alive(8), may_hand_over=False)
    assert (p.action, p.dst) == (Action.MOVE, NEW)


def test_plan_without_the_phones_binding_keeps_the_dialog_route():
    p = plan(None, node=NODE_A, target=OLD, conid=7, alive=alive())
    assert (p.action, p.dst, p.from_conid) == (Action.KEEP, OLD, 7)
    # Handed over, but no phone known here and no alias: nothing to deliver to.
    assert plan(None, node=NODE_B, target="", conid=None, alive=alive(),
                may_hand_over=False).action is Action.NOWHERE


def test_waiter_verdicts():
    w = Waiter(CONTACT, 7, NODE_A, since=100.0, until=105.0, call_id="c1")
    assert Waiter.from_json(w.to_json()) == w
    same = phone(conid=7, received=OLD)
    assert verdict(w, same, 101.0) == "wait"
    assert verdict(w, None, 101.0) == "wait"
    assert verdict(w, phone(), 101.0) == "resume"
    assert verdict(w, phone(conid=7, node=NODE_B), 101.0) == "resume"
    assert verdict(w, same, 105.0) == "expire" and verdict(w, None, 106.0) == "expire"


def test_due_resumes_expires_and_drops_what_it_cannot_read():
    back = Waiter(CONTACT, 7, NODE_A, 100.0, 105.0)
    still = Waiter("sip:b@x.invalid;transport=ws", 3, NODE_A, 100.0, 105.0)
    over = Waiter("sip:c@x.invalid;transport=ws", 4, NODE_A, 95.0, 100.0)
    entries = [("1:2", back.to_json()), ("3:4", still.to_json()), ("5:6", over.to_json()),
               ("7:8", "{not json"), ("junk", still.to_json())]
    looked_up = []

    def find(contacts):
        looked_up.append(contacts)
        return [phone(conid=8), phone(conid=3), None, None, phone(conid=3)][:len(contacts)]

    got = [(key, ids, what) for key, ids, what, _ in due(entries, find, 101.0)]
    assert got == [("1:2", (1, 2), "resume"), ("5:6", (5, 6), "expire"), ("7:8", (7, 8), "expire"),
                   ("junk", None, "expire")]
    assert len(looked_up) == 1, "one lookup for all waiting requests"
    assert due([], find, 101.0) == [] and len(looked_up) == 1


@pytest.mark.parametrize("key,ids", [("123:456", (123, 456)), ("123", None), ("a:1", None), (":", None)])
def test_transaction_id(key, ids):
    assert transaction_id(key) == ids


def test_from_phone_side_reads_the_top_route_however_written():
    """Every in-dialog request asks; a Route set with no WebSocket transport is
    answered without parsing it, the rest as before."""
    assert from_phone_side("<sip:192.0.2.10:8080;transport=ws;lr;r2=on>, <sip:192.0.2.10;lr>")
    assert from_phone_side("<sip:192.0.2.10:8080;lr;TRANSPORT=WSS>")
    assert from_phone_side("<sip:192.0.2.10:8080;lr;transport = ws>")
    assert not from_phone_side("<sip:192.0.2.10;lr>, <sip:192.0.2.10:8080;transport=ws;lr>")
    assert not from_phone_side("<sip:192.0.2.10;lr;transport=wsx>")
    assert not from_phone_side("<sip:192.0.2.10;lr;r2=on>")
    assert not from_phone_side("")
