# event_bridge: PGXS build of the extension, its regression and TAP tests.

EXTENSION = event_bridge
EXTVERSION = 0.2
MODULE_big = event_bridge
OBJS = \
	src/event_bridge.o \
	src/launcher.o \
	src/decoder.o \
	src/capture.o \
	src/capture_store.o \
	src/capture_filter.o \
	src/capture_slot.o \
	src/retention.o \
	src/fault.o \
	src/api.o \
	src/format.o \
	src/http.o \
	src/kafka.o \
	src/signing.o \
	src/target.o \
	src/rules.o \
	src/event.o \
	src/row_filter.o \
	src/delivery.o \
	src/delivery_catalog.o \
	src/delivery_read.o \
	src/delivery_answer.o \
	src/connector_api.o \
	src/caller.o \
	src/catalog.o

# The install script of the current version and the upgrade script from
# the previous one are built from sql/extension/, one file per area:
# 10_catalog.sql creates the tables (a fresh install only); the other
# numbered files create or replace functions, views, grants and triggers,
# so an upgrade runs them too, after its own catalog changes.  Released
# versions' scripts are kept as they shipped.
EB_AREAS = $(sort $(wildcard sql/extension/[0-9]*.sql))
EB_REPLACEABLE = $(filter-out sql/extension/10_catalog.sql,$(EB_AREAS))
DATA = sql/event_bridge--0.1.sql
DATA_built = sql/event_bridge--$(EXTVERSION).sql sql/event_bridge--0.1--$(EXTVERSION).sql
PGFILEDESC = "event_bridge - row changes to function calls"

PG_CPPFLAGS = -DEB_EXTVERSION='"$(EXTVERSION)"' -Wall -Wextra -Werror -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers
SHLIB_LINK = -lcurl -lrdkafka

# `make FAULT_INJECTION=1` compiles in the fault points the tests use.
ifdef FAULT_INJECTION
PG_CPPFLAGS += -DEB_FAULT_INJECTION
endif

# pg_regress runs in a throw-away instance configured for logical decoding.
# Regression tests are sql/<name>.sql with expected/<name>.out; the
# extension's own scripts (sql/event_bridge--*.sql) sit beside them.
REGRESS = streams stream_errors records ddl migration connectors connector_errors credentials rules row_filters capture_filters named_events bad_input
REGRESS_OPTS = --temp-instance=tmp_check --temp-config=test/regress.conf
TAP_TESTS = 1
PROVE_TESTS = $(sort $(wildcard test/t/*.pl))

# No LLVM bitcode: a fresh machine need not have clang.
override with_llvm = no

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

sql/event_bridge--$(EXTVERSION).sql: $(EB_AREAS)
	cat $^ > $@

sql/event_bridge--0.1--$(EXTVERSION).sql: sql/extension/upgrade--0.1--$(EXTVERSION).sql $(EB_REPLACEABLE)
	cat $^ > $@

# The library knows the version of the SQL it was built for.
src/event_bridge.o: Makefile
