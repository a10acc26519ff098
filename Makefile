# On a fresh Debian 12, as root:  make demo   (or)   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.setup-done
# gcc and python3-dev: pypcap ships no Linux wheel, pip builds it against libpcap-dev.
APT_PACKAGES := libpcap-dev ethtool tcpdump iproute2 iputils-ping python3-venv procps gcc python3-dev postgresql iptables

.PHONY: setup test demo lab-down perf

setup: $(STAMP)

$(STAMP): pyproject.toml
	@missing=""; \
	for pkg in $(APT_PACKAGES); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make setup: run as root to install:$$missing" >&2; exit 1; fi; \
		echo "installing:$$missing"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

test: setup
	$(VENV)/bin/pytest -q

demo: setup
	$(VENV)/bin/tcpcopy-lab demo

# Removes the default lab and any lab left behind by a crashed test run (prefixes tcl, tcl<digits>).
lab-down: setup
	$(VENV)/bin/tcpcopy-lab down --all

# Benchmarks (not part of the tests): tcpreplay's stateless ceiling against stateful replay, side by side.
perf: setup
	@dpkg -s tcpreplay >/dev/null 2>&1 || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y tcpreplay)
	$(VENV)/bin/pip install -q matplotlib
	$(VENV)/bin/python perf/run.py
