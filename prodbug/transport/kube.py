"""``kube://`` targets (not built yet)."""

from __future__ import annotations

from prodbug.config import DEFAULT_PORT
from prodbug.connect import CARRIERS, Carrier
from prodbug.errors import ConfigError
from prodbug.target import Target


def open_kube(target: Target, timeout: float) -> Carrier:
    raise ConfigError(
        f"kube:// targets are not supported yet; forward instead: kubectl port-forward "
        f"POD {DEFAULT_PORT}, then use 127.0.0.1:{DEFAULT_PORT}")


CARRIERS["kube"] = open_kube
