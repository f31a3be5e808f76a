"""The supervisor: the master, the boot and shutdown of workers and the agent,
listeners, the pid file, the control socket and status listener, metrics.

Named so it cannot collide with the public ``pyresty.process`` (this
process's type, ``signal_master``: see ``pyresty/runtime/process.py``).
"""
