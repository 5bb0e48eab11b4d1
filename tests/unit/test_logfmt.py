from kemi import logfmt


def test_round_trip():
    text = logfmt.line("location.found", call_id="a b@c", method="INVITE", user="1001",
                       reason='he said "no"\n', skip=None)
    assert "skip" not in text
    assert logfmt.parse(text) == {"event": "location.found", "call_id": "a b@c",
                                  "method": "INVITE", "user": "1001", "reason": 'he said "no"\n'}
