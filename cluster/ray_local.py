"""Start (or join) Ray for a lam job. Local clusters listen on 127.0.0.1 only."""
from __future__ import annotations

import os

# Ray 2.60 rewrites a loopback node address to the external interface unless this is 0.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to `address` (or RAY_ADDRESS) if given, else start a private local cluster.

    Returns True when this call started Ray (and the caller should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": WORKER_ENV}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, configure_logging=False)
        return True
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env=runtime_env,
        log_to_driver=False,
        configure_logging=False,
    )
    return True
