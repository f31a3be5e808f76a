"""The process model (master, workers, agent) -- and, as ``pyresty.process``,
its public face: ``type()`` and ``signal_master()`` (see runtime/process.py)."""
from pyresty.runtime.process import signal_master, type  # noqa: A004

__all__ = ["signal_master", "type"]
