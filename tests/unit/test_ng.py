import socket
import threading

import bencode
import pytest

from kemi import ng


def test_encode_decode():
    pkt = ng.encode("abc", {"command": "ping"})
    assert pkt == b"abc d7:command4:pinge"
    assert ng.decode(b"abc d6:result4:ponge") == ("abc", {"result": "pong"})


def test_client_against_fake_server():
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))

    def serve():
        data, addr = srv.recvfrom(4096)
        cookie, _, _ = data.partition(b" ")
        srv.sendto(b"stale d6:result4:ponge", addr)  # a late reply to someone else
        srv.sendto(cookie + b" " + bencode.encode({"result": "pong"}), addr)
    threading.Thread(target=serve, daemon=True).start()
    client = ng.NgClient("127.0.0.1", srv.getsockname()[1], timeout=2)
    assert client.ping() is True
    srv.close()


def test_timeout_names_the_engine():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(ng.NgError, match=f"127.0.0.1:{port} did not answer"):
            ng.NgClient("127.0.0.1", port, timeout=0.2).request({"command": "ping"})


def test_from_spec():
    c = ng.NgClient.from_spec("udp:127.0.0.1:2223")
    assert c.addr == ("127.0.0.1", 2223)
