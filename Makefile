# The two commands of README.md. Both bootstrap .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# setup.py compiles the modules of its HOT_PATH with mypyc; a change rebuilds them
COMPILED := setup.py $(shell sed -n 's/^ *"\(pyresty\/[a-z0-9_/]*\.py\)",$$/\1/p' setup.py)

.PHONY: run test bench bench-faults bench-tls conformance conformance-h2 clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml $(COMPILED)
	$(BIN)/pip install -q --upgrade pip
	# compat: a path entry in a .pth, not an import hook (the hook cost every command ~50 ms)
	$(BIN)/pip install -q -e '.[test,bench]' --config-settings editable_mode=compat
	# the extensions now match their sources (tests/conftest.py compares the times)
	find pyresty -name '*.so' -exec touch {} +
	# bytecode: an editable install writes none (nor does python under
	# PYTHONDONTWRITEBYTECODE), and compiling pyresty's sources cost every
	# command ~50 ms (issue 17: -s reload)
	$(BIN)/python -m compileall -q pyresty > /dev/null
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/pyresty -c examples/quickstart/pyresty.toml

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

bench: $(STAMP)
	$(BIN)/python bench/run.py

# the Autobahn TestSuite against a pyresty echo handler (minutes; needs Python 2.7)
conformance: $(STAMP)
	$(BIN)/python tests/conformance/autobahn.py

# issue 17's table: idle connections, slow readers, uploads, slowloris, respawn, reload
bench-faults: $(STAMP)
	$(BIN)/python bench/faults.py

# HTTPS (HTTP/1.1, HTTP/2) and TLS handshakes beside nginx with one certificate
bench-tls: $(STAMP)
	$(BIN)/python bench/tls.py

# nghttp, h2load and the HTTP/2 framing cases against a real pyresty (slow)
conformance-h2: $(STAMP)
	$(BIN)/python tests/conformance_h2.py

clean:
	rm -rf $(VENV) build *.egg-info .autobahn
	find . -path ./$(VENV) -prune -o -name '*.so' -print -delete
