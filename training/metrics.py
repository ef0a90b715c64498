"""Metric loggers behind one Protocol: JSONL always, TensorBoard when installed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol


class MetricLogger(Protocol):
    def log(self, step: int, metrics: dict) -> None: ...

    def close(self) -> None: ...


class JsonlLogger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a")

    def log(self, step: int, metrics: dict) -> None:
        self._f.write(json.dumps({"step": step, **metrics}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class TensorBoardLogger:
    def __init__(self, logdir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

        self._w = SummaryWriter(str(logdir))

    def log(self, step: int, metrics: dict) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self._w.add_scalar(k, v, step)

    def close(self) -> None:
        self._w.close()


class MultiLogger:
    def __init__(self, out_dir: Path) -> None:
        self.loggers: list[MetricLogger] = [JsonlLogger(out_dir / "metrics.jsonl")]
        try:
            self.loggers.append(TensorBoardLogger(out_dir / "tensorboard"))
        except ImportError:
            pass

    def log(self, step: int, metrics: dict) -> None:
        for lg in self.loggers:
            lg.log(step, metrics)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()
