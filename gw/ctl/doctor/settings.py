"""settings: the GW_* variables load and validate (kemi/settings.py). gwctl loads
them before anything else; when they do not load, this check is the one answer."""
from __future__ import annotations

from gw.ctl.doctor.base import Check, fail, ok
from kemi.settings import SettingsError


def invalid(exc: SettingsError) -> dict:
    return fail("settings", str(exc), "Fix that variable in the gateway's environment "
                "(deploy/.env, compose.yaml or your shell).")


CHECK = Check("settings", lambda ctx, engine: ok("settings", "GW_* settings are valid"))
