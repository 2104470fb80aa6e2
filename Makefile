# nfv-doctor: `make demo` and `make test` work from a fresh clone (as root).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
QUICK ?=
BENCH_ARGS := $(if $(QUICK),--quick,)

.PHONY: setup proto demo test bench clean etcd

setup: $(STAMP) etcd

# editable, with every extra `make test`, `make proto` and `make demo` load (the lab is not in a wheel)
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[inspector,openstack,test]'
	touch $(STAMP)

# Debian's etcd-server for the election and its tests (installed when missing).
etcd:
	@if ! command -v etcd >/dev/null 2>&1 && [ ! -x /usr/bin/etcd ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's etcd-server"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; \
	    systemctl disable --now etcd >/dev/null 2>&1 || true; \
	  else echo "etcd is missing: apt-get install etcd-server (as root)"; fi; \
	fi

proto: $(STAMP)
	$(PY) -m doctor_common.protogen

demo: setup
	$(PY) -m doctor_common.lab.demo

test: setup
	$(PY) -m pytest tests

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b $(BENCH_ARGS) || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
