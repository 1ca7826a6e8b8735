# strata: `make demo` and `make test` work on a fresh Debian machine as root from a clean clone.
SHELL := /bin/bash
.DEFAULT_GOAL := build

APT_PACKAGES := build-essential pkg-config libfuse3-dev fuse3 libzstd-dev libssl-dev libcurl4-openssl-dev attr
NODE_INCLUDE ?= $(shell node -p "require('path').resolve(process.execPath, '../../include/node')")
CFLAGS ?= -O2 -g
CFLAGS += -Wall -Wextra -Werror -std=gnu11 -D_GNU_SOURCE

.PHONY: deps system-deps node-deps native build demo test bench bench-quick bench-deps clean

# System packages: only run apt when something is missing, so repeated runs stay fast.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

node-deps: node_modules/.package-lock.json

deps: system-deps node-deps

# The N-API addon: syscalls Node lacks (xattrs, mknod, utimensat with ns, SEEK_DATA) and zstd.
build/strata_sys.node: native/sys/strata_sys.c native/sys/codec.c native/sys/scan.c native/sys/extract.c native/sys/capture.c native/sys/tar.c native/sys/mount.c native/sys/spawn.c native/sys/sys.h | system-deps
	@mkdir -p build
	$(CC) $(CFLAGS) -fPIC -shared -I$(NODE_INCLUDE) -o $@ native/sys/strata_sys.c native/sys/codec.c native/sys/scan.c native/sys/extract.c native/sys/capture.c native/sys/tar.c native/sys/mount.c native/sys/spawn.c -lzstd -lcrypto -lpthread

native: build/strata_sys.node build/strata-fuse

build: deps native
	npx tsc -p tsconfig.json

demo: build
	node scripts/demo.mjs

test: build
	npx vitest run

# Benchmarks (docs/benchmarks.md): the contenders' tools, Debian packages used by the bench only.
BENCH_APT_PACKAGES := squashfs-tools squashfuse fuse-overlayfs zstd

bench-deps:
	@missing=""; for p in $(BENCH_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for the benchmarks:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi

bench: build bench-deps
	node test/bench/run.mjs

bench-quick: build bench-deps
	node test/bench/run.mjs --quick

clean:
	rm -rf build dist

# ---- lazy restore: the FUSE data plane (native/fuse, docs/lazy.md) ----------------------------
FUSE_SRCS := native/fuse/strata_fuse.c native/fuse/sx_index.c native/fuse/sx_fetch.c native/fuse/sx_frames.c native/fuse/sx_http.c native/fuse/sx_awake.c
FUSE_HDRS := native/fuse/sx_format.h native/fuse/sx_index.h native/fuse/sx_fetch.h native/fuse/sx_frames.h native/fuse/sx_http.h native/fuse/sx_awake.h

build/strata-fuse: $(FUSE_SRCS) $(FUSE_HDRS) | system-deps
	@mkdir -p build
	$(CC) $(CFLAGS) $$(pkg-config --cflags fuse3 libzstd libcrypto libcurl) -pthread -o $@ $(FUSE_SRCS) $$(pkg-config --libs fuse3 libzstd libcrypto) -ldl
