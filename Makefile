# event_bridge: PGXS build of the extension, its regression and TAP tests.

EXTENSION = event_bridge
MODULE_big = event_bridge
OBJS = \
	src/event_bridge.o \
	src/launcher.o \
	src/decoder.o \
	src/capture.o \
	src/retention.o \
	src/fault.o \
	src/api.o \
	src/format.o \
	src/http.o \
	src/delivery.o \
	src/connector_api.o

DATA = $(wildcard sql/event_bridge--*.sql)
PGFILEDESC = "event_bridge - row changes to function calls"

PG_CPPFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers
SHLIB_LINK = -lcurl

# `make FAULT_INJECTION=1` compiles in the fault points the tests use.
ifdef FAULT_INJECTION
PG_CPPFLAGS += -DEB_FAULT_INJECTION
endif

# pg_regress runs in a throw-away instance configured for logical decoding.
# Regression tests are sql/<name>.sql with expected/<name>.out; the
# extension's own scripts (sql/event_bridge--*.sql) sit beside them.
REGRESS = streams stream_errors records ddl connectors connector_errors bad_input
REGRESS_OPTS = --temp-instance=tmp_check --temp-config=test/regress.conf
TAP_TESTS = 1
PROVE_TESTS = $(sort $(wildcard test/t/*.pl))

# No LLVM bitcode: a fresh machine need not have clang.
override with_llvm = no

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
