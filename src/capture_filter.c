/*-------------------------------------------------------------------------
 *
 * capture_filter.c
 *	  Capture filters (DESIGN 9.5): a stream's row filter and column list for
 *	  one table, as the output plugin applies them to decoded changes.
 *
 * A row filter is a boolean expression that set_table_filter checked with
 * the rules of a PostgreSQL 15 publication row filter (row_filter.c): only
 * the table's columns, built-in immutable functions and operators, no
 * subqueries.  Its tree is kept as text (nodeToString) and turned into an
 * ExprState once per description of the table.  A row matches when the
 * expression is true; NULL and false leave it out, as in a publication.
 *
 * The tree names columns by number and type.  If the table changed so that
 * they no longer fit (a column it uses was dropped or changed type), the
 * filter is not applied and every row is kept, with a WARNING: capture
 * never stops nor loses rows because of a stale filter.
 *
 * Values are never fetched from disk: an unchanged TOASTed value of a new
 * row is taken from the old row when the change carries it, else it is
 * NULL to the filter.
 *
 * IDENTIFICATION
 *	  src/capture_filter.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "executor/executor.h"
#include "nodes/nodeFuncs.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "capture.h"

/* Do the columns an expression uses still exist, with the types it knows? */
static bool
vars_do_not_fit(Node *node, TupleDesc desc)
{
	if (node == NULL)
		return false;
	if (IsA(node, Var))
	{
		Var		   *var = (Var *) node;
		Form_pg_attribute att;

		if (var->varno != 1 || var->varattno < 1 || var->varattno > desc->natts)
			return true;
		att = TupleDescAttr(desc, var->varattno - 1);
		return att->attisdropped || att->atttypid != var->vartype;
	}
	return expression_tree_walker(node, vars_do_not_fit, (void *) desc);
}

/* Frees what capture_filter_prepare made. */
void
capture_filter_release(TableFilter *f)
{
	if (f->slot != NULL)
		ExecDropSingleTupleTableSlot(f->slot);
	if (f->estate != NULL)
		FreeExecutorState(f->estate);
	if (f->context != NULL)
		MemoryContextDelete(f->context);
	f->slot = NULL;
	f->estate = NULL;
	f->state = NULL;
	f->context = NULL;
	f->prepared_for = 0;
	f->version = 0;
}

/*
 * Makes a filter ready for a description of its table (serial: the
 * plugin's number of that description; a new one makes it again).  Runs
 * under the decoding transaction.
 */
void
capture_filter_prepare(TableFilter *f, Relation rel, uint64 serial)
{
	TupleDesc	desc = RelationGetDescr(rel);
	MemoryContext old;
	Node	   *expr;

	if (f->prepared_for == serial)
		return;
	capture_filter_release(f);
	f->broken = false;
	f->context = AllocSetContextCreate(TopMemoryContext, "event_bridge capture filter",
									   ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(f->context);
	f->slot = MakeSingleTupleTableSlot(CreateTupleDescCopy(desc), &TTSOpsVirtual);
	if (f->tree != NULL)
	{
		expr = stringToNode(f->tree);
		if (vars_do_not_fit(expr, desc))
		{
			f->broken = true;
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the row filter of table %s in stream %d no longer fits the table: every row is kept",
							RelationGetRelationName(rel), f->stream_id),
					 errhint("Set it again with event_bridge.set_table_filter.")));
		}
		else
		{
			f->estate = CreateExecutorState();
			f->state = ExecPrepareExpr((Expr *) expr, f->estate);
		}
	}
	MemoryContextSwitchTo(old);
	f->prepared_for = serial;
}

/*
 * Does a row pass the filter?  fill is the old row of an UPDATE, for the
 * unchanged TOASTed values of tuple; NULL if the change has none.
 */
bool
capture_filter_matches(TableFilter *f, HeapTuple tuple, HeapTuple fill)
{
	TupleTableSlot *slot = f->slot;
	TupleDesc	desc = slot->tts_tupleDescriptor;
	ExprContext *econtext;
	Datum		result;
	bool		isnull;
	Datum	   *fvalues = NULL;
	bool	   *fnulls = NULL;

	if (f->state == NULL)
		return true;			/* no row filter, or a broken one */

	ExecClearTuple(slot);
	heap_deform_tuple(tuple, desc, slot->tts_values, slot->tts_isnull);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (slot->tts_isnull[i] || att->attlen != -1 ||
			!VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(slot->tts_values[i])))
			continue;
		if (fill != NULL && fvalues == NULL)
		{
			fvalues = palloc(sizeof(Datum) * desc->natts);
			fnulls = palloc(sizeof(bool) * desc->natts);
			heap_deform_tuple(fill, desc, fvalues, fnulls);
		}
		if (fvalues != NULL && !fnulls[i] &&
			!VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(fvalues[i])))
			slot->tts_values[i] = fvalues[i];
		else
			slot->tts_isnull[i] = true;
	}
	ExecStoreVirtualTuple(slot);

	econtext = GetPerTupleExprContext(f->estate);
	econtext->ecxt_scantuple = slot;
	result = ExecEvalExprSwitchContext(f->state, econtext, &isnull);
	ResetPerTupleExprContext(f->estate);
	ExecClearTuple(slot);
	return !isnull && DatumGetBool(result);
}

/* Does the filter keep a column? */
bool
capture_filter_keeps_column(const TableFilter *f, AttrNumber attnum)
{
	if (f == NULL || f->ncolumns == 0)
		return true;
	for (int i = 0; i < f->ncolumns; i++)
		if (f->columns[i] == attnum)
			return true;
	return false;
}
