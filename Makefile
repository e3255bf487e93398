# cksm - cluster-wide samepage merging.
#
#   make            build everything into build/ (gcc; CC=clang works too)
#   make deps       install the Debian build and test dependencies (root)
#   make test       build, then run every test; ends with "N passed, N failed"
#   make demo       start a local cluster (2 shards, 3 nodes) and show it
#   make soak       ten minutes of killed and restarted agents under load: lost = 0
#   make fuzz       run the libFuzzer targets longer (FUZZ_SECONDS each)
#   make bench      build and run the benchmarks
#   make bench-ksm  cksm beside the kernel's KSM on this node (a few minutes)
#   make lint       cppcheck and the clang-format check
#   make install    install binaries, units and the example config

VERSION := 0.1.0
CC ?= gcc
ifeq ($(origin CC),default)
CC := gcc
endif
B ?= build
PREFIX ?= /usr/local
DESTDIR ?=
FUZZ_SECONDS ?= 300
# V=1 shows the full commands.
ifeq ($(V),1)
Q :=
E := @true
else
Q := @
E := @echo
endif

PKGS := libuv libprotobuf-c libsodium inih libmicrohttpd libsystemd libxxhash libibverbs librdmacm
WARN := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wstrict-prototypes \
	-Wmissing-prototypes -Wvla -Wno-missing-field-initializers
CFLAGS ?= -O2 -g
CPPFLAGS_ALL := -D_GNU_SOURCE -DCKSM_VERSION='"$(VERSION)"' \
	-I$(B)/proto -Idaemon/common $(shell pkg-config --cflags $(PKGS))
CFLAGS_ALL := -std=gnu11 $(WARN) -fno-strict-aliasing -pthread $(CFLAGS)
LIBS := $(shell pkg-config --libs $(PKGS)) -pthread -lm

PROTO_C := $(B)/proto/cksm.pb-c.c
PROTO_H := $(B)/proto/cksm.pb-c.h

COMMON_SRC := $(wildcard daemon/common/*.c)
AGENT_SRC := $(wildcard daemon/agent/*.c)
COORD_SRC := $(wildcard daemon/coord/*.c)
COMMON_OBJ := $(COMMON_SRC:%.c=$(B)/%.o) $(B)/proto/cksm.pb-c.o

BINS := $(B)/cksmd $(B)/cksmctl $(B)/libcksm.so $(B)/cksm-testpeer $(B)/cksm-planter $(B)/cksm-scan \
	$(B)/cksm-churner $(B)/cksm-evictee $(B)/cksm-dropper $(B)/cksm-racer $(B)/cksm-sockfuzz \
	$(B)/cksm-datafuzz $(B)/cksm-victim $(B)/cksm-execer $(B)/cksm-rangeflood $(B)/libcksm-slowzap.so \
	$(B)/libcksm-nobeacon.so $(B)/cksm-flood $(B)/cksm-hotcold $(B)/cksm-forker $(B)/cksm-remapper $(B)/cksm-ksmwork \
	$(B)/cksm-pinner $(B)/cksm-rdmapeer
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%)
BENCH_BINS := $(patsubst bench/%.c,$(B)/bench/%,$(wildcard bench/*.c))

.PHONY: all deps test vmtest soak demo fuzz fuzz-build bench bench-vm bench-ksm lint format install clean
all: $(BINS) $(UNIT_BINS) $(BENCH_BINS)

$(PROTO_C) $(PROTO_H) &: proto/cksm.proto
	@mkdir -p $(B)/proto
	$(E) '  PROTOC  $<'
	$(Q)protoc-c --proto_path=proto --c_out=$(B)/proto $<

$(B)/proto/cksm.pb-c.o: $(PROTO_C)
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -Wno-missing-prototypes -c -o $@ $<

$(B)/%.o: %.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -MMD -MP -c -o $@ $<

$(B)/libcksmcommon.a: $(COMMON_OBJ)
	$(E) '  AR      $@'
	$(Q)rm -f $@ && ar rcs $@ $^

$(B)/cksmd: daemon/cksmd.c $(AGENT_SRC:%.c=$(B)/%.o) $(COORD_SRC:%.c=$(B)/%.o) $(B)/libcksmcommon.a
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) -Idaemon $(CFLAGS_ALL) -o $@ $^ $(LIBS)

$(B)/cksmctl: client/cksmctl.c $(B)/libcksmcommon.a
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^ $(LIBS) $(shell pkg-config --libs --cflags jansson smartcols)

# libcksm goes into programs that are not built with sanitizers: never
# instrumented, whatever CFLAGS says.
$(B)/libcksm.so: client/libcksm.c daemon/common/local.c daemon/common/local.h daemon/common/uffd_move.h
	$(E) '  CC      $@'
	$(Q)$(CC) -D_GNU_SOURCE -Idaemon/common -std=gnu11 $(WARN) -O2 -g -fPIC -shared \
		-fvisibility=hidden -pthread -Wl,-z,defs -o $@ $(filter %.c,$^) -ldl -lxxhash

AGENT_OBJ := $(AGENT_SRC:%.c=$(B)/%.o)
COORD_LIB_OBJ := $(filter-out $(B)/daemon/coord/coord.o,$(COORD_SRC:%.c=$(B)/%.o))

$(B)/cksm-evictee: tests/tools/evictee.c
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^

$(B)/cksm-forker: tests/tools/forker.c
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^ -pthread

$(B)/cksm-hotcold: tests/tools/hotcold.c
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^ -pthread

$(B)/cksm-dropper: tests/tools/dropper.c
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^ -pthread

$(B)/cksm-racer: tests/tools/racer.c
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^ -pthread

$(B)/cksm-pinner: tests/tools/pinner.c
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^

$(B)/cksm-remapper: tests/tools/remapper.c
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^

$(B)/cksm-ksmwork: bench/ksm/work.c
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^

$(B)/cksm-victim: tests/tools/victim.c
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^

$(B)/cksm-execer: tests/tools/execer.c
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^

# Preloaded into programs that are not built with sanitizers, as libcksm is.
$(B)/libcksm-slowzap.so: tests/tools/slowzap.c
	$(E) '  CC      $@'
	$(Q)$(CC) -D_GNU_SOURCE -std=gnu11 $(WARN) -Idaemon/common -O2 -g -fPIC -shared -Wl,-z,defs -o $@ $^ -ldl

$(B)/libcksm-nobeacon.so: tests/tools/nobeacon.c
	$(E) '  CC      $@'
	$(Q)$(CC) -D_GNU_SOURCE -std=gnu11 $(WARN) -Idaemon/common -O2 -g -fPIC -shared -Wl,-z,defs -o $@ $^ -ldl

$(B)/cksm-rangeflood: tests/tools/rangeflood.c
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^ -pthread

$(B)/cksm-sockfuzz: tests/tools/sockfuzz.c $(B)/libcksmcommon.a
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^ $(LIBS)

$(B)/cksm-datafuzz: tests/tools/datafuzz.c $(B)/daemon/agent/pool.o $(B)/libcksmcommon.a
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) -Idaemon $(CFLAGS_ALL) -o $@ $^ $(LIBS)

$(B)/cksm-flood: tests/tools/flood.c
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^

$(B)/cksm-churner: tests/tools/churner.c
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^ -pthread

$(B)/cksm-planter: tests/tools/planter.c
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^ -pthread

$(B)/cksm-scan: tests/tools/scantool.c $(filter-out $(B)/daemon/agent/agent.o,$(AGENT_OBJ)) $(B)/libcksmcommon.a
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) -Idaemon $(CFLAGS_ALL) -o $@ $^ $(LIBS)

$(B)/cksm-rdmapeer: tests/tools/rdmapeer.c $(B)/daemon/agent/rdmawire.o $(B)/libcksmcommon.a
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) -Idaemon $(CFLAGS_ALL) -o $@ $^ $(LIBS)

$(B)/cksm-testpeer: tests/tools/testpeer.c $(B)/libcksmcommon.a
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -o $@ $^ $(LIBS)

$(B)/tests/%: tests/unit/%.c $(filter-out $(B)/daemon/agent/agent.o,$(AGENT_SRC:%.c=$(B)/%.o)) $(COORD_LIB_OBJ) $(B)/libcksmcommon.a
	@mkdir -p $(dir $@)
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) -Idaemon $(CFLAGS_ALL) -o $@ $^ $(LIBS) $(shell pkg-config --libs --cflags cmocka)

-include $(shell find $(B) -name '*.d' 2>/dev/null)

deps:
	./scripts/deps.sh

test:
	./scripts/deps.sh
	$(MAKE) all
	$(MAKE) B=build/san CC=clang CFLAGS='-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all -DCKSM_INJECT' all
	$(MAKE) fuzz-build
	./tests/run.sh

# The soak: ten minutes of agents killed, stopped and restarted under load.
soak:
	./scripts/deps.sh
	$(MAKE) all
	$(MAKE) B=build/san CC=clang CFLAGS='-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all -DCKSM_INJECT' all
	CKSM_BIN=$(CURDIR)/build/san bash tests/soak/soak.sh

# The tests that need a real kernel (soft-RoCE, the RDMA transport), in QEMU.
vmtest:
	./scripts/deps.sh
	$(MAKE) all
	./tests/vm/run.sh

demo:
	./scripts/deps.sh
	$(MAKE) all
	./scripts/demo.sh

FUZZ_TARGETS := $(patsubst tests/fuzz/%.c,$(B)/fuzz/%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_FLAGS := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
# Sources a target needs beyond daemon/common, per target.
FUZZ_EXTRA_fuzz_data := daemon/agent/pool.c
.SECONDEXPANSION:
$(B)/fuzz/%: tests/fuzz/%.c $(COMMON_SRC) $(PROTO_C) $$(FUZZ_EXTRA_$$*)
	@mkdir -p $(dir $@)
	$(E) '  CC      $@'
	$(Q)clang $(CPPFLAGS_ALL) -Idaemon $(CFLAGS_ALL) -O1 -g $(FUZZ_FLAGS) -Wno-missing-prototypes -o $@ $< $(COMMON_SRC) $(PROTO_C) $(FUZZ_EXTRA_$*) $(LIBS)
fuzz-build: $(FUZZ_TARGETS)
fuzz: $(FUZZ_TARGETS)
	for f in $(FUZZ_TARGETS); do mkdir -p $(B)/corpus/$$(basename $$f); \
		$$f -max_total_time=$(FUZZ_SECONDS) $(B)/corpus/$$(basename $$f) tests/fuzz/corpus/$$(basename $$f) || exit 1; done

$(B)/bench/%: bench/%.c $(filter-out $(B)/daemon/agent/agent.o,$(AGENT_SRC:%.c=$(B)/%.o)) $(COORD_LIB_OBJ) $(B)/libcksmcommon.a
	@mkdir -p $(dir $@)
	$(E) '  CC      $@'
	$(Q)$(CC) $(CPPFLAGS_ALL) -Idaemon $(CFLAGS_ALL) -o $@ $^ $(LIBS)
bench: $(BENCH_BINS) all
	for b in $(filter-out %/rdma,$(BENCH_BINS)); do $$b || exit 1; done
	./bench/ksm/ksm.sh

# The data transports in a guest with soft-RoCE, beside perftest (bench/vm/rdma.sh).
bench-vm: all
	./tests/vm/run.sh bench/vm/rdma.sh

# cksm beside the kernel's KSM, on one node (bench/ksm/ksm.sh).
bench-ksm: all
	./bench/ksm/ksm.sh

LINT_SRC := $(shell git ls-files 'daemon/*.[ch]' 'client/*.[ch]' 'tests/*.[ch]' 'bench/*.[ch]' 2>/dev/null)
lint: $(PROTO_H)
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability,performance \
		--inline-suppr --suppress=missingIncludeSystem --std=c11 -D_GNU_SOURCE \
		-DPROTOBUF_C_VERSION_NUMBER=1004001 -DPROTOBUF_C_MIN_COMPILER_VERSION=1000000 \
		-Idaemon/common -I$(B)/proto daemon client
	clang-format --dry-run --Werror $(LINT_SRC)

format:
	clang-format -i $(LINT_SRC)

UNITS := cksm-agent.service cksm-coord@.service
install: all
	install -D -m 0755 $(B)/cksmd $(DESTDIR)$(PREFIX)/sbin/cksmd
	install -D -m 0755 $(B)/cksmctl $(DESTDIR)$(PREFIX)/bin/cksmctl
	install -D -m 0755 $(B)/libcksm.so $(DESTDIR)$(PREFIX)/lib/libcksm.so
	install -D -m 0644 deploy/cksmctl.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/cksmctl
	install -D -m 0644 deploy/cksm-alerts.yml $(DESTDIR)$(PREFIX)/share/cksm/cksm-alerts.yml
	for u in $(UNITS); do \
		sed 's|/usr/local|$(PREFIX)|g' deploy/$$u >$(B)/$$u && \
		install -D -m 0644 $(B)/$$u $(DESTDIR)/etc/systemd/system/$$u || exit 1; done
	for d in docs/*.md; do install -D -m 0644 $$d $(DESTDIR)$(PREFIX)/share/doc/cksm/$$(basename $$d) || exit 1; done
	test -e $(DESTDIR)/etc/cksm/cksm.conf || install -D -m 0644 deploy/cksm.conf $(DESTDIR)/etc/cksm/cksm.conf
	install -D -m 0644 deploy/cksm.sysusers $(DESTDIR)/usr/lib/sysusers.d/cksm.conf
	if [ -z "$(DESTDIR)" ]; then systemd-sysusers cksm.conf 2>/dev/null || \
		getent group cksm >/dev/null || groupadd --system cksm; fi

clean:
	rm -rf build
