/*-------------------------------------------------------------------------
 *
 * catalog.c
 *	  How the workers talk to the extension's tables: every statement goes
 *	  through eb_run, prepared once and kept; C that reads or writes a row of
 *	  the tables directly finds its columns by name with eb_column.
 *
 * Columns by name: an upgrade may add columns to a table, and code that
 * counted on positions would then read the wrong ones.  A worker whose SQL
 * changes version restarts (eb_extension_installed), so names resolved
 * while it runs stay right.
 *
 * IDENTIFICATION
 *	  src/catalog.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "utils/resowner.h"

#include "catalog.h"

/*
 * Runs a statement with the given parameters (nulls as SPI takes them, NULL
 * for none) and returns the number of rows it returned or changed; the rows
 * are in SPI_tuptable.  Must be called inside a transaction, connected to
 * SPI.
 */
uint64
eb_run(EbStatement *stmt, Datum *values, const char *nulls)
{
	int			rc;

	if (stmt->plan == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare_cursor(stmt->sql, stmt->nargs, stmt->argtypes,
											  stmt->cursor_options);

		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "could not prepare event_bridge statement \"%s\": %s",
				 stmt->sql, SPI_result_code_string(SPI_result));
		stmt->plan = plan;
	}
	rc = SPI_execute_plan(stmt->plan, values, nulls, false, 0);
	if (rc < 0)
		elog(ERROR, "event_bridge statement \"%s\" failed: %s",
			 stmt->sql, SPI_result_code_string(rc));
	return SPI_processed;
}

/* A column of a row that the last eb_run returned. */
Datum
eb_result(uint64 row, int attno, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, attno, isnull);
}

/*
 * Runs fn(arg) in a subtransaction.  Returns NULL if it succeeded; else rolls
 * the subtransaction back and returns the error, copied into the caller's
 * memory context.  For work whose failure must stay with one connector.
 * Must be called inside a transaction.
 */
ErrorData *
eb_run_isolated(void (*fn) (void *arg), void *arg)
{
	MemoryContext caller = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(caller);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	CurrentResourceOwner = owner;
	return edata;
}

/* The number of the column of a table with this name; an error if none. */
AttrNumber
eb_column(TupleDesc desc, const char *name)
{
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
			return att->attnum;
	}
	elog(ERROR, "event_bridge table has no column \"%s\"", name);
	return InvalidAttrNumber;	/* keep compiler quiet */
}
