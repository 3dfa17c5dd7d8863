/*-------------------------------------------------------------------------
 *
 * catalog.h
 *	  How the workers talk to the extension's tables: statements prepared
 *	  once and kept, and columns found by name.
 *
 * IDENTIFICATION
 *	  src/catalog.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVENT_BRIDGE_CATALOG_H
#define EVENT_BRIDGE_CATALOG_H

#include "postgres.h"

#include "access/tupdesc.h"
#include "executor/spi.h"

#define EB_MAX_STATEMENT_ARGS	16

/*
 * A statement a worker runs: its text (every table qualified; the workers'
 * search_path is empty, so operators and functions resolve in pg_catalog),
 * its parameter types, and the plan, prepared at the first run and kept for
 * the process's life.  cursor_options can ask for a generic plan.
 */
typedef struct EbStatement
{
	const char *sql;
	int			nargs;
	Oid			argtypes[EB_MAX_STATEMENT_ARGS];
	int			cursor_options;
	SPIPlanPtr	plan;
} EbStatement;

extern uint64 eb_run(EbStatement *stmt, Datum *values, const char *nulls);
extern Datum eb_result(uint64 row, int attno, bool *isnull);
extern AttrNumber eb_column(TupleDesc desc, const char *name);
extern ErrorData *eb_run_isolated(void (*fn) (void *arg), void *arg);

#endif							/* EVENT_BRIDGE_CATALOG_H */
