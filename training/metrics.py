"""Metric loggers behind one Protocol: JSONL always (OUT/metrics.jsonl), TensorBoard (OUT/tb) unless turned off.

    tensorboard --logdir OUT/tb
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol


class MetricLogger(Protocol):
    def log(self, step: int, metrics: dict) -> None: ...

    def close(self) -> None: ...


class JsonlLogger:
    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.exists():
            # rows a killed run logged after its last checkpoint (and a finished run's end-of-run eval) are
            # logged again by the resumed run
            rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
            keep = [r for r in rows if r["step"] < resume_step or (r["step"] == resume_step and "eval_loss" not in r)]
            path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        self._f = open(path, "a")

    def log(self, step: int, metrics: dict) -> None:
        self._f.write(json.dumps({"step": step, **metrics}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class TensorBoardLogger:
    def __init__(self, logdir: Path, resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

        # purge_step hides the killed run's events after the checkpoint we resume from
        self._w = SummaryWriter(str(logdir), purge_step=resume_step + 1 if resume_step else None)

    def log(self, step: int, metrics: dict) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self._w.add_scalar(k, v, step)
        self._w.flush()

    def close(self) -> None:
        self._w.close()


def check_tensorboard(enabled: bool) -> None:
    """Fail at start-up, not after the model is built, when TensorBoard is asked for but missing."""
    if not enabled:
        return
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ValueError("tensorboard: true needs the `tensorboard` package (pip install tensorboard), "
                         "or set tensorboard=false") from None


class MultiLogger:
    def __init__(self, out_dir: Path, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.loggers: list[MetricLogger] = [JsonlLogger(out_dir / "metrics.jsonl", resume_step)]
        if tensorboard:
            self.loggers.append(TensorBoardLogger(out_dir / "tb", resume_step))

    def log(self, step: int, metrics: dict) -> None:
        for lg in self.loggers:
            lg.log(step, metrics)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()
