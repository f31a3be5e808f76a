"""``make conformance``: the Autobahn TestSuite against a pyresty echo handler.

The suite (``wstest -m fuzzingclient``, the reference conformance suite for
WebSocket servers) is a Python 2.7 program. This script:

``SECTIONS=1,2,12.1`` runs only those sections or groups (the summary file is
written only for the whole run).

1. makes ``.autobahn/`` once: a virtualenv of a Python 2.7 interpreter
   (``$PYTHON2``, else pyenv's 2.7, else ``python2.7`` on PATH) with
   ``autobahntestsuite`` and the requirements it pins;
2. starts pyresty (one worker) with the echo handler below on a free port;
3. runs the fuzzing client on the sections of issue 13 (1-7, 9, 10, 12, 13);
4. reads the suite's report and writes a summary (``SUMMARY``): per section,
   how many cases ended OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED.

Exit status 1 when a case FAILED (any section), when a case of sections
1-7, 10, 12 or 13 ended otherwise than OK/NON-STRICT/INFORMATIONAL, or when
the server did not survive the run.
"""
from __future__ import annotations

import collections
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".autobahn"
WSTEST = VENV / "bin" / "wstest"
SUITE = "autobahntestsuite==25.10.1"
SUMMARY = ROOT / "tests" / "conformance" / "SUMMARY.md"
SECTIONS = ["1", "2", "3", "4", "5", "6", "7", "9", "10", "12", "13"]
STRICT = {"1", "2", "3", "4", "5", "6", "7", "10", "12", "13"}   # must be OK/NON-STRICT/INFORMATIONAL
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}

APP = '''
import pyresty

async def echo(r):
    ws = await pyresty.websocket.accept(r, compress=True)
    async for message in ws:
        await ws.send(message)
'''

CONFIG = '''
workers = 1
error_log_level = "warn"
[[server]]
listen = "127.0.0.1:{port}"
access_log = "off"
[[server.location]]
path = "= /"
content = "app:echo"
'''


def python2() -> str:
    candidates = [os.environ.get("PYTHON2", ""),
                  os.path.expanduser("~/.pyenv/versions/2.7.18/bin/python"),
                  shutil.which("python2.7") or ""]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    sys.exit("conformance: no Python 2.7 interpreter (set PYTHON2=/path/to/python2.7); "
             "the Autobahn TestSuite runs only on 2.7")


def ensure_suite() -> None:
    if WSTEST.exists():
        return
    py2 = python2()
    tools = VENV.with_name(".autobahn-tools")
    print(f"conformance: installing {SUITE} into {VENV} (Python 2.7: {py2})", flush=True)
    # virtualenv 20.22 dropped 2.7; an older one, kept out of the interpreter's site-packages
    subprocess.run([py2, "-m", "pip", "install", "-q", "--target", str(tools),
                    "virtualenv<20.22"], check=True)
    subprocess.run([py2, "-m", "virtualenv", "-q", str(VENV)], check=True,
                   env={**os.environ, "PYTHONPATH": str(tools)})
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", SUITE], check=True)
    shutil.rmtree(tools, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(prefix: Path, port: int) -> subprocess.Popen[bytes]:
    (prefix / "app.py").write_text(textwrap.dedent(APP))
    (prefix / "pyresty.toml").write_text(CONFIG.format(port=port))
    proc = subprocess.Popen([sys.executable, "-m", "pyresty.cli", "-c", str(prefix / "pyresty.toml")],
                            cwd=prefix, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"conformance: pyresty exited with {proc.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)      # polling a port that answers, bounded by the deadline
    proc.kill()
    sys.exit("conformance: pyresty did not listen within 20 s")


def run_suite(port: int, outdir: Path, sections: list[str]) -> None:
    spec = {"outdir": str(outdir), "servers": [{"agent": "pyresty", "url": f"ws://127.0.0.1:{port}/"}],
            "cases": [f"{s}.*" for s in sections], "exclude-cases": [], "exclude-agent-cases": {}}
    spec_path = outdir.parent / "fuzzingclient.json"
    spec_path.write_text(json.dumps(spec))
    # the suite's own progress, one line per case, for whoever tails it
    with open(VENV / "wstest.log", "w") as progress:
        subprocess.run([str(WSTEST), "-m", "fuzzingclient", "-s", str(spec_path)], check=True,
                       cwd=outdir.parent, stdout=progress, stderr=subprocess.STDOUT)


def summarize(outdir: Path) -> tuple[str, list[str]]:
    if not (outdir / "index.json").exists():
        sys.exit(f"conformance: wstest wrote no report (see {VENV / 'wstest.log'})")
    index = json.loads((outdir / "index.json").read_text())["pyresty"]
    by_section: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    bad = []
    for case, result in index.items():
        section = case.split(".")[0]
        behavior = result["behavior"]
        close = result.get("behaviorClose", "OK")
        by_section[section][behavior] += 1
        if behavior == "FAILED" or close == "FAILED" or (section in STRICT and behavior not in PASSING):
            bad.append(f"{case}: {behavior} (close: {close})")
    kinds = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
    lines = ["| section | cases | " + " | ".join(kinds) + " |",
             "|---|---:|" + "---:|" * len(kinds)]
    for section in sorted(by_section, key=int):
        counts = by_section[section]
        lines.append(f"| {section} | {sum(counts.values())} | "
                     + " | ".join(str(counts[k]) for k in kinds) + " |")
    total = collections.Counter()
    for counts in by_section.values():
        total.update(counts)
    lines.append(f"| all | {sum(total.values())} | " + " | ".join(str(total[k]) for k in kinds) + " |")
    return "\n".join(lines), bad


def main() -> int:
    # SECTIONS=1,2 make conformance: a part of the suite (the summary says which)
    sections = os.environ.get("SECTIONS", "").replace(" ", "").split(",") \
        if os.environ.get("SECTIONS") else SECTIONS
    ensure_suite()
    with tempfile.TemporaryDirectory(prefix="pyresty-autobahn-") as tmp:
        work = Path(tmp)
        (work / "server").mkdir()
        port = free_port()
        proc = start_server(work / "server", port)
        started = time.monotonic()
        try:
            run_suite(port, work / "reports", sections)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(30)
        elapsed = time.monotonic() - started
        table, bad = summarize(work / "reports")
        kept = VENV / ("reports" if sections == SECTIONS else "reports-" + "-".join(sections))
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(work / "reports", kept)
    header = (f"Autobahn TestSuite ({SUITE}, wstest -m fuzzingclient) against a pyresty echo "
              f"handler (`compress=True`), sections {', '.join(sections)}; "
              f"{elapsed:.0f} s on this machine.\n\n")
    if sections == SECTIONS:
        SUMMARY.write_text(header + table + "\n")
    print(header + table)
    print(f"\nfull report: {kept}/index.html")
    if not alive:
        print("conformance: the server did not survive the run", file=sys.stderr)
        return 1
    if bad:
        print("conformance: not conformant:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
