"""Seeing a run: metric writers (TensorBoard and JSON lines), the console line with speed and ETA,
text tables."""

import datetime
import itertools
import json
import os
import socket
import sys
import time

import jax

from hcnet import paths

METRICS_FILE = "metrics.jsonl"
_FILES = itertools.count()  # event files this process opened: part of each one's name


def measured(scalars: dict):
    """The (name, value) pairs that have a value: a metric without data (None) is left out."""
    return [(k, v) for k, v in scalars.items() if v is not None]


def shown(value) -> str:
    """A metric as tables and the console show it: '-' where it has no value."""
    return "-" if value is None else f"{value:.4f}"


class JsonLinesWriter:
    """One JSON object per write_scalars call: {"step": N, "train/loss": ..., ...}, appended.

    A run that starts at `first_step` (a resume, or a restart with no checkpoint) keeps the rows of
    earlier steps and drops those a killed run wrote past its checkpoint (they are written again),
    and a last line the kill cut short."""

    def __init__(self, path, first_step: int = 1):
        path = paths.path(path)
        kept = [
            line
            for line in (path.read_text().splitlines() if path.exists() else [])
            if _step(line) < first_step
        ]
        self._file = paths.LogFile(path, "".join(line + "\n" for line in kept).encode())

    def write_scalars(self, step: int, scalars: dict):
        self._file.write(
            (
                json.dumps({"step": int(step), **{k: float(v) for k, v in measured(scalars)}})
                + "\n"
            ).encode()
        )
        self._file.flush()

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


def _step(line: str) -> float:
    """A metrics row's step; infinite for a line a kill cut short (it is dropped)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class TensorBoardWriter:
    """Scalars as TensorBoard events (events.out.tfevents.*) in TensorBoard's record format, written
    without TensorFlow (clu's SummaryWriter and TensorBoard's own file writer import it: seconds per
    process, for a few numbers).

    Each process start writes its own file, opening with a SessionLog START at `first_step`:
    TensorBoard then drops what earlier files hold from that step on (what a killed run wrote past
    its checkpoint)."""

    def __init__(self, logdir, first_step: int = 1):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        # TensorBoard reads a folder's files in name order: the counter is zero-padded, or a
        # process's 10th file would sort before its 9th (and, written in the same second, replay a
        # resumed run's steps first)
        host = f"{socket.gethostname()}.{os.getpid()}"
        name = f"events.out.tfevents.{time.time():.0f}.{host}.{next(_FILES):06d}.v2"
        self._file = paths.LogFile(paths.path(logdir) / name)
        self._records = RecordWriter(self._file)
        self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))
        self._write(
            self._event(
                wall_time=time.time(),
                step=first_step,
                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
            )
        )
        self._file.flush()

    def _write(self, event):
        self._records.write(event.SerializeToString())

    def write_scalars(self, step: int, scalars: dict):
        values = [self._summary.Value(tag=k, simple_value=float(v)) for k, v in measured(scalars)]
        self._write(
            self._event(wall_time=time.time(), step=int(step), summary=self._summary(value=values))
        )
        self._file.flush()

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


class Writers:
    """Every write goes to each writer (none on processes other than 0)."""

    def __init__(self, writers: list):
        self.writers = writers

    def write_scalars(self, step: int, scalars: dict):
        for w in self.writers:
            w.write_scalars(step, scalars)

    def flush(self):
        for w in self.writers:
            w.flush()

    def close(self):
        for w in self.writers:
            w.close()


def create_writer(workdir, first_step: int = 1) -> Writers:
    """TensorBoard events and metrics.jsonl in the workdir, from process 0; nothing from the others.
    `first_step`: the step the run starts at (rows and events from it on are a killed run's,
    replaced)."""
    if jax.process_index() != 0:
        return Writers([])
    workdir = paths.path(workdir)
    return Writers(
        [
            TensorBoardWriter(workdir, first_step),
            JsonLinesWriter(workdir / METRICS_FILE, first_step),
        ]
    )


def read_metrics(workdir) -> list[dict]:
    path = paths.path(workdir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Console:
    """The log-step line; between log steps, a progress bar when the terminal is interactive."""

    def __init__(self, total_steps: int, steps_per_epoch: float, batch_size: int, stream=None):
        self.total, self.per_epoch, self.batch = total_steps, steps_per_epoch, batch_size
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() and jax.process_index() == 0
        self.devices = jax.device_count()
        self.mark(0)

    def mark(self, step: int):
        """Starts a timing window at `step` (after compilation, a restore, an evaluation)."""
        self.t0, self.step0, self.wait = time.perf_counter(), step, 0.0

    def waited(self, seconds: float):
        self.wait += seconds

    def progress(self, step: int):
        if self.interactive:
            done = int(30 * step / self.total)
            self.stream.write(f"\r[{'#' * done}{'.' * (30 - done)}] {step}/{self.total}")
            self.stream.flush()

    def line(self, step: int, scalars: dict) -> dict:
        """Prints the line for `step` and returns the speed figures it shows (for the writers
        too)."""
        seconds = max(time.perf_counter() - self.t0, 1e-9)
        rate = (step - self.step0) * self.batch / seconds
        eta = (self.total - step) * self.batch / rate if rate > 0 else 0.0
        speed = {
            "train/images_per_s": rate,
            "train/images_per_s_per_device": rate / self.devices,
            "train/input_wait": self.wait / seconds,
        }
        if jax.process_index() == 0:
            self.stream.write(
                ("\r" if self.interactive else "")
                + f"step {step}/{self.total} epoch {step / self.per_epoch:.2f} "
                f"loss {scalars['train/loss']:.4f} lr {scalars['train/lr']:.3g} | "
                f"{rate:.1f} img/s, {rate / self.devices:.1f}/device, "
                f"input wait {100 * speed['train/input_wait']:.0f}% | "
                f"eta {datetime.timedelta(seconds=round(eta))}\n"
            )
            self.stream.flush()
        self.mark(step)
        return speed

    def say(self, text: str):
        if jax.process_index() == 0:
            self.stream.write(("\n" if self.interactive else "") + text + "\n")
            self.stream.flush()


def text_table(head: tuple, rows: list) -> str:
    """Rows of strings as aligned columns under `head` (two spaces apart)."""
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(len(head))]
    return "\n".join(
        "  ".join(v.ljust(n) for v, n in zip(row, widths)).rstrip() for row in (head, *rows)
    )
