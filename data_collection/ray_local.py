"""Start (or join) Ray for a lam job. A local cluster listens on 127.0.0.1 only.

    init_ray()                            # private local cluster, every socket on loopback
    RAY_ADDRESS=127.0.0.1:6379 lam ...    # join a running cluster instead (checked first, fails in seconds)
"""
from __future__ import annotations

import ipaddress
import os
import socket

# Ray reads this once, at `import ray`. At its Linux default (1) Ray rewrites a loopback node
# address to the machine's external interface, so the GCS, raylet, workers and agents bind on all
# interfaces or on that address, and a driver joining 127.0.0.1:PORT dials EXTERNAL_IP:PORT.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
os.environ.setdefault(LOOPBACK_SWITCH, "0")

WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", LOOPBACK_SWITCH: "0"}
# TCP connect to a joined cluster's GCS port: a dead address fails here, not after Ray's retries.
CONNECT_TIMEOUT_S = 3.0


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to `address` (or RAY_ADDRESS) if given, else start a private local cluster.

    Returns True when this call started Ray (and the caller should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": WORKER_ENV}
    if address:
        _keep_loopback(force=False)
        check_cluster(address)
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as e:
            raise ConnectionError(f"cannot join the Ray cluster at {address} (RAY_ADDRESS): "
                                  f"{_first_line(e)}") from None
        return True
    _keep_loopback(force=True)
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env=runtime_env,
        log_to_driver=False,
        configure_logging=False,
    )
    return True


def _keep_loopback(force: bool) -> None:
    """Make the loopback switch hold in this process even when `ray` was imported before this
    module set it (Ray keeps the value it read at import; `ray.init` consults it when it resolves
    127.0.0.1). `force`: a private local cluster stays on loopback whatever the environment says."""
    if force:
        os.environ[LOOPBACK_SWITCH] = "0"  # inherited by the GCS, raylet, agents and workers it starts
    try:
        from ray._private import ray_constants
    except ImportError:  # a Ray that moved it: the environment variable alone must do
        return
    if os.environ.get(LOOPBACK_SWITCH) == "0":
        ray_constants.ENABLE_RAY_CLUSTER = False


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a plain GCS address; None for "auto" and ray:// client addresses."""
    if address == "auto" or "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"RAY_ADDRESS {address!r} is not HOST:PORT (the GCS address `ray start --head` prints), "
                         f"'auto', or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_cluster(address: str) -> None:
    """Fail in seconds, with the reason, where `ray.init(address)` would retry in silence:
    nothing listening at the address, or a cluster that wants an auth token this driver lacks."""
    hp = _host_port(address)
    if hp is None:
        return
    host, port = hp
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ConnectionError(f"no Ray cluster answers at {address} (RAY_ADDRESS): {e.strerror or e}; start one "
                              f"(`ray start --head --node-ip-address 127.0.0.1 --port {port}`) or unset RAY_ADDRESS "
                              f"so lam starts its own local Ray") from None
    if _is_loopback(host) and "RAY_AUTH_MODE" not in os.environ:
        # Ray's own rule for a local cluster it finds by itself (address "auto"): use this machine's
        # token (~/.ray/auth_token, RAY_AUTH_TOKEN) if there is one. It never leaves the machine.
        try:
            from ray._private.authentication.authentication_token_setup import (
                maybe_enable_token_auth_if_token_available,
            )
        except ImportError:  # a Ray without token authentication
            return
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    _check_gcs_auth(address)


def _check_gcs_auth(address: str) -> None:
    """One GCS handshake: answers in milliseconds, with AuthenticationError when the token is wrong."""
    try:
        from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # a Ray without token authentication: ray.init reports what goes wrong
        return
    try:
        ensure_token_if_auth_enabled(None, create_token_if_missing=False)  # else Ray's core aborts the process
    except AuthenticationError:
        raise ConnectionError(f"cannot join the Ray cluster at {address}: RAY_AUTH_MODE=token but this driver has no "
                              f"token; set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) to the "
                              f"cluster's token") from None
    try:
        GcsClient(address=address)
    except AuthenticationError:
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        raise ConnectionError(f"the Ray cluster at {address} requires token authentication and this driver's token "
                              f"is missing or wrong (RAY_AUTH_MODE={mode}): set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
                              f"(or RAY_AUTH_TOKEN_PATH) to the cluster's token") from None
    except Exception as e:  # anything else listening there: not a GCS
        raise ConnectionError(f"{address} (RAY_ADDRESS) does not answer as a Ray GCS ({_first_line(e)}); give the "
                              f"GCS port that `ray start --head` printed, not the dashboard's") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
