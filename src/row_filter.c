/*-------------------------------------------------------------------------
 *
 * row_filter.c
 *	  Capture row filters (DESIGN 9.5): a boolean SQL expression over a
 *	  captured table's columns, with the restrictions of a PostgreSQL 15
 *	  publication row filter, checked and turned into an expression tree.
 *
 * The rules are publication's (publicationcmds.c in PostgreSQL 15), so
 * users know them: the expression is transformed as a WHERE clause over
 * the table alone, and may hold only columns (no system columns),
 * constants, built-in operators, types and collations, and immutable
 * built-in functions; no subqueries, aggregates, window or set-returning
 * functions.  As with a publication that publishes UPDATE and DELETE, a
 * table that is not REPLICA IDENTITY FULL may be filtered on its key
 * columns only, the only ones an old row carries.  These bounds matter
 * beyond familiarity: the capture worker evaluates the filter as a
 * superuser, under a historic snapshot, where only immutable built-in
 * code is safe.
 *
 * The text is parsed as the WHERE clause of a SELECT of nothing, and only
 * that clause is kept: what the text could smuggle around it (a UNION, a
 * FROM) is refused by the shape check, and what it could put inside by the
 * expression check.
 *
 * IDENTIFICATION
 *	  src/row_filter.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/sysattr.h"
#include "access/table.h"
#include "access/transam.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "fmgr.h"
#include "nodes/nodeFuncs.h"
#include "parser/parse_clause.h"
#include "parser/parse_collate.h"
#include "parser/parse_relation.h"
#include "parser/parser.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

PG_FUNCTION_INFO_V1(event_bridge_check_row_filter);

/* Refuses a row filter, with why in the detail. */
static void
pg_attribute_noreturn()
refuse_filter(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("invalid row filter"),
			 errdetail("%s", detail),
			 errhint("A row filter is a boolean expression over the table's columns, like those of a publication's WHERE clause: status = 'paid' AND amount > 100.")));
}

/* Parses the text as the WHERE clause of "SELECT 1 WHERE (...)"; returns the clause. */
static Node *
parse_where(const char *text)
{
	List	   *stmts = NIL;
	SelectStmt *select;
	MemoryContext context = CurrentMemoryContext;

	/* A syntax error's position would point into the wrapped text: say it plainly. */
	PG_TRY();
	{
		stmts = raw_parser(psprintf("SELECT 1 WHERE (%s)", text), RAW_PARSE_DEFAULT);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(context);
		edata = CopyErrorData();
		FlushErrorState();
		refuse_filter(edata->message);
	}
	PG_END_TRY();

	if (list_length(stmts) != 1 ||
		!IsA(((RawStmt *) linitial(stmts))->stmt, SelectStmt))
		refuse_filter("It is not one expression.");
	select = (SelectStmt *) ((RawStmt *) linitial(stmts))->stmt;
	if (select->op != SETOP_NONE || select->fromClause != NIL || select->withClause != NULL ||
		select->groupClause != NIL || select->havingClause != NULL || select->windowClause != NIL ||
		select->sortClause != NIL || select->limitCount != NULL || select->limitOffset != NULL ||
		select->lockingClause != NIL || select->distinctClause != NIL ||
		select->intoClause != NULL || select->valuesLists != NIL ||
		list_length(select->targetList) != 1 || select->whereClause == NULL)
		refuse_filter("It is not one expression.");
	return select->whereClause;
}

/* Is a function user-defined, or mutable?  (check_functions_in_node's callback) */
static bool
mutable_or_user_function(Oid func_id, void *context)
{
	return func_id >= FirstNormalObjectId || func_volatile(func_id) != PROVOLATILE_IMMUTABLE;
}

/* What the walker keeps: the relation, and the columns the expression uses. */
typedef struct FilterCheck
{
	Relation	rel;
	Bitmapset  *columns;
} FilterCheck;

/*
 * Refuses a node that a publication row filter may not hold, as
 * PostgreSQL 15's check_simple_rowfilter_expr_walker does; collects the
 * columns used.
 */
static bool
check_node(Node *node, FilterCheck *check)
{
	if (node == NULL)
		return false;
	if (IsA(node, List))		/* the elements of an ArrayExpr */
		return expression_tree_walker(node, check_node, check);
	switch (nodeTag(node))
	{
		case T_Var:
			if (((Var *) node)->varattno < 0)
				refuse_filter("System columns are not allowed.");
			check->columns = bms_add_member(check->columns, ((Var *) node)->varattno);
			break;
		case T_OpExpr:
		case T_DistinctExpr:
		case T_NullIfExpr:
			if (((OpExpr *) node)->opno >= FirstNormalObjectId)
				refuse_filter("User-defined operators are not allowed.");
			break;
		case T_ScalarArrayOpExpr:
			if (((ScalarArrayOpExpr *) node)->opno >= FirstNormalObjectId)
				refuse_filter("User-defined operators are not allowed.");
			break;
		case T_RowCompareExpr:
			{
				ListCell   *lc;

				foreach(lc, ((RowCompareExpr *) node)->opnos)
					if (lfirst_oid(lc) >= FirstNormalObjectId)
						refuse_filter("User-defined operators are not allowed.");
			}
			break;
		case T_ArrayExpr:
		case T_BooleanTest:
		case T_BoolExpr:
		case T_CaseExpr:
		case T_CaseTestExpr:
		case T_CoalesceExpr:
		case T_CollateExpr:
		case T_Const:
		case T_FuncExpr:
		case T_MinMaxExpr:
		case T_NullTest:
		case T_RelabelType:
		case T_XmlExpr:
			break;
		default:
			refuse_filter("Only columns, constants, built-in operators, built-in data types, built-in collations, and immutable built-in functions are allowed.");
	}
	if (exprType(node) >= FirstNormalObjectId)
		refuse_filter("User-defined types are not allowed.");
	if (check_functions_in_node(node, mutable_or_user_function, NULL))
		refuse_filter("User-defined or built-in mutable functions are not allowed.");
	if (exprCollation(node) >= FirstNormalObjectId || exprInputCollation(node) >= FirstNormalObjectId)
		refuse_filter("User-defined collations are not allowed.");
	return expression_tree_walker(node, check_node, check);
}

/* Refuses a filter on columns that an old row of the table does not carry. */
static void
check_replica_identity(FilterCheck *check)
{
	Relation	rel = check->rel;
	Bitmapset  *identity;
	int			attno = -1;

	if (rel->rd_rel->relreplident == REPLICA_IDENTITY_FULL)
		return;
	identity = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_IDENTITY_KEY);
	while ((attno = bms_next_member(check->columns, attno)) >= 0)
		if (!bms_is_member(attno - FirstLowInvalidHeapAttributeNumber, identity))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_COLUMN_REFERENCE),
					 errmsg("row filter uses column \"%s\", which is not in the replica identity of \"%s\"",
							get_attname(RelationGetRelid(rel), attno, false),
							RelationGetRelationName(rel)),
					 errdetail("An UPDATE or DELETE carries the old row's replica identity columns only, so the filter could not be decided for it."),
					 errhint("Run ALTER TABLE %s REPLICA IDENTITY FULL, or filter on the key columns.",
							 quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
														RelationGetRelationName(rel)))));
}

/*
 * SQL: checks a row filter for a table and returns it as an expression
 * tree (nodeToString), as the capture worker will evaluate it.
 */
Datum
event_bridge_check_row_filter(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *filter = text_to_cstring(PG_GETARG_TEXT_PP(1));
	Relation	rel = table_open(relid, AccessShareLock);
	ParseState *pstate = make_parsestate(NULL);
	ParseNamespaceItem *nsitem;
	Node	   *where;
	FilterCheck check = {rel, NULL};

	/* No source text: error positions would point into another query. */
	pstate->p_sourcetext = NULL;
	nsitem = addRangeTableEntryForRelation(pstate, rel, AccessShareLock, NULL, false, false);
	addNSItemToQuery(pstate, nsitem, false, true, true);
	where = transformWhereClause(pstate, parse_where(filter), EXPR_KIND_WHERE, "row filter");
	assign_expr_collations(pstate, where);
	(void) check_node(where, &check);
	check_replica_identity(&check);
	table_close(rel, AccessShareLock);
	PG_RETURN_TEXT_P(cstring_to_text(nodeToString(where)));
}
