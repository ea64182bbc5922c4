"""Run-time telemetry, used by every rank while a run goes on: the recorder (busy, idle and I/O time,
bytes sent by kind, peak memory, spans), the Chrome/Perfetto trace, and run.json. Nothing here
predicts anything: what a run measured about itself, written where the user finds it."""
