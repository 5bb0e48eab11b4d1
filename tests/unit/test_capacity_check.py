"""gwctl doctor's capacity check (gw/ctl/doctor/capacity.py), from given figures."""
from gw.ctl.doctor import capacity
from kemi import settings

MB = 1 << 20
CFG = settings.load({"GW_MAX_AGENTS": "1000"})
TOTAL = CFG.sizing.shm_mb * MB


def test_plenty_left():
    r = capacity.assess(CFG, 500, TOTAL, TOTAL // 2)
    assert r["status"] == "ok" and "500 of 1000" in r["detail"] and r["fix"] == ""


def test_fewer_than_20_percent_connections_left_warns_with_a_fix():
    r = capacity.assess(CFG, 850, TOTAL, TOTAL // 2)
    assert r["status"] == "warn" and "15% left" in r["detail"]
    assert "GW_MAX_AGENTS" in r["fix"] and "node" in r["fix"]


def test_fewer_than_20_percent_shm_left_warns():
    # "Left": of the shm that connections may take (all but the reserve for calls).
    reserve = CFG.sizing.shm_reserve_bytes
    r = capacity.assess(CFG, 10, TOTAL, reserve + int((TOTAL - reserve) * 0.15))
    assert r["status"] == "warn" and "15% left" in r["detail"]
    r = capacity.assess(CFG, 10, TOTAL, reserve + int((TOTAL - reserve) * 0.25))
    assert r["status"] == "ok"


def test_full_node_fails():
    r = capacity.assess(CFG, 1000, TOTAL, TOTAL // 2)
    assert r["status"] == "fail" and "refused" in r["detail"]
    r = capacity.assess(CFG, 10, TOTAL, CFG.sizing.shm_reserve_bytes - 1)
    assert r["status"] == "fail" and "reserve" in r["detail"]


class FakeKam:
    def __init__(self, replies):
        self.replies = replies

    def rpc(self, *command):
        value = self.replies[command[0]]
        if isinstance(value, Exception):
            raise value
        return value


def test_check_reads_kamailio():
    kam = FakeKam({"stats.get_statistics": ["websocket:ws_current_connections = 900"],
                   "core.shmmem": [{"total": str(TOTAL), "free": str(TOTAL // 2)}]})
    r = capacity.check(CFG, kam)
    assert r["status"] == "warn" and r["data"]["connections"] == 900
    down = capacity.check(CFG, FakeKam({"stats.get_statistics": RuntimeError("no socket")}))
    assert down["status"] == "skip" and "no socket" in down["detail"]
