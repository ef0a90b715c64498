"""The web console: plain HTML, CSS and a little vanilla JavaScript in `static/`, no build step.

`lam agent serve` serves it at `/` (agent/api.py mounts it with `mount_console`); the page reads and drives
sessions through the public HTTP API only, with the API key the user types in. `lam view DIR`
(eval/view.py) reuses its stylesheet and frame rendering for finished runs and datasets.
"""
