/*-------------------------------------------------------------------------
 *
 * caller.c
 *	  Who called the API: the role whose rights the SECURITY DEFINER API
 *	  functions check, and the checks themselves.
 *
 * The API functions run as the extension's owner, a superuser, so inside
 * them current_user says nothing about the caller.  The caller is the role
 * in effect where the outermost event_bridge function was called: the owner
 * of the innermost SECURITY DEFINER function around that call, or, if there
 * is none, the session's current role (SET ROLE included).  PostgreSQL
 * switches the user of a SECURITY DEFINER function before anything of the
 * function's own runs, so the function manager hook keeps a stack of the
 * frames of such functions (and of functions with SET clauses, which go the
 * same way) with the user each runs as.  A caller in a security-restricted
 * operation (an index expression, VACUUM, a materialized view refresh),
 * which switches users without that hook, is refused.
 *
 * IDENTIFICATION
 *	  src/caller.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rls.h"
#include "utils/syscache.h"

#include "event_bridge.h"

PG_FUNCTION_INFO_V1(event_bridge_check_admin);
PG_FUNCTION_INFO_V1(event_bridge_check_readable);
PG_FUNCTION_INFO_V1(event_bridge_may_read_record);
PG_FUNCTION_INFO_V1(event_bridge_hide_statement);
PG_FUNCTION_INFO_V1(event_bridge_caller);
PG_FUNCTION_INFO_V1(event_bridge_check_credential_use);

/* What the hook knows of a function, kept with its call cache. */
typedef struct HookedFunction
{
	bool		definer;		/* SECURITY DEFINER */
	Oid			namespace;
} HookedFunction;

/* One frame of a hooked function: whether it is a definer, and its user. */
typedef struct Frame
{
	bool		definer;
	Oid			namespace;
	Oid			user;
} Frame;

static Frame *frames = NULL;
static int	nframes = 0;
static int	max_frames = 0;

static fmgr_hook_type prev_fmgr_hook = NULL;

static HookedFunction *
hooked_function(FmgrInfo *flinfo, Datum *private)
{
	HookedFunction *f = (HookedFunction *) DatumGetPointer(*private);
	HeapTuple	tup;

	if (f != NULL)
		return f;
	f = MemoryContextAllocZero(flinfo->fn_mcxt, sizeof(HookedFunction));
	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(flinfo->fn_oid));
	if (HeapTupleIsValid(tup))
	{
		Form_pg_proc proc = (Form_pg_proc) GETSTRUCT(tup);

		f->definer = proc->prosecdef;
		f->namespace = proc->pronamespace;
		ReleaseSysCache(tup);
	}
	*private = PointerGetDatum(f);
	return f;
}

/*
 * Called around every function that PostgreSQL runs as SECURITY DEFINER or
 * with SET clauses, after it has switched the user: pushes and pops the
 * frames.
 */
static void
eb_fmgr_hook(FmgrHookEventType event, FmgrInfo *flinfo, Datum *private)
{
	if (event == FHET_START)
	{
		HookedFunction *f = hooked_function(flinfo, private);

		if (nframes == max_frames)
		{
			int			n = Max(16, max_frames * 2);

			frames = frames == NULL ?
				MemoryContextAlloc(TopMemoryContext, sizeof(Frame) * n) :
				repalloc(frames, sizeof(Frame) * n);
			max_frames = n;
		}
		frames[nframes].definer = f->definer;
		frames[nframes].namespace = f->namespace;
		frames[nframes].user = GetUserId();
		nframes++;
	}
	else if (nframes > 0)
		nframes--;

	if (prev_fmgr_hook)
		prev_fmgr_hook(event, flinfo, private);
}

/* No hooked frame outlives its transaction; forget any an error skipped. */
static void
caller_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE)
		nframes = 0;
}

/* Installs the hook; called from _PG_init. */
void
eb_caller_init(void)
{
	prev_fmgr_hook = fmgr_hook;
	fmgr_hook = eb_fmgr_hook;
	RegisterXactCallback(caller_xact_callback, NULL);
}

/*
 * The role that called the event_bridge function running now (see the file
 * header).  Errors out in a security-restricted operation.
 */
Oid
eb_api_caller(void)
{
	Oid			schema = get_namespace_oid("event_bridge", false);

	/* Loaded later, the hook would have missed the frames around the call. */
	eb_check_preloaded();
	if (InSecurityRestrictedOperation())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("event_bridge functions cannot be called in a security-restricted operation")));
	for (int i = nframes - 1; i >= 0; i--)
	{
		if (frames[i].namespace == schema)
			continue;
		if (frames[i].definer)
			return frames[i].user;
	}
	return GetOuterUserId();
}

/* Refuses a caller that is neither a superuser nor an event_bridge_admin member. */
Datum
event_bridge_check_admin(PG_FUNCTION_ARGS)
{
	Oid			caller = eb_api_caller();
	Oid			admin = get_role_oid("event_bridge_admin", true);

	if (!superuser_arg(caller) &&
		!(OidIsValid(admin) && is_member_of_role(caller, admin)))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to manage event_bridge streams and connectors"),
				 errhint("Only superusers and members of role \"event_bridge_admin\" may do this.")));
	PG_RETURN_VOID();
}

/* The caller, as the owner of what it creates (a credential). */
Datum
event_bridge_caller(PG_FUNCTION_ARGS)
{
	PG_RETURN_OID(eb_api_caller());
}

/*
 * Refuses a caller that may not use a credential: a credential is used by
 * members of the role that created it and by superusers only, so that no
 * other admin can send it to an endpoint of theirs.  Arguments: the
 * credential's owner and name.
 */
Datum
event_bridge_check_credential_use(PG_FUNCTION_ARGS)
{
	Oid			owner = PG_GETARG_OID(0);
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	Oid			caller = eb_api_caller();

	if (!superuser_arg(caller) && !is_member_of_role(caller, owner))
	{
		char	   *owner_name = GetUserNameFromId(owner, true);

		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for credential \"%s\"", name),
				 owner_name ?
				 errdetail("Only members of role \"%s\", which created it, and superusers may use or change it.",
						   owner_name) :
				 errdetail("The role that created it no longer exists; only superusers may use or change it.")));
	}
	PG_RETURN_VOID();
}

/*
 * May caller read every row of every table given?  It needs SELECT on the
 * whole table, and no row-level security may apply to it.  Tables that no
 * longer exist are passed over.  Superusers may.  With raise, the answer no
 * is an error that says why.
 */
static bool
may_read(Oid caller, ArrayType *arr, bool raise)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	if (superuser_arg(caller))
		return true;
	deconstruct_array(arr, REGCLASSOID, sizeof(Oid), true, TYPALIGN_INT, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
	{
		Oid			relid = DatumGetObjectId(elems[i]);

		if (nulls[i] || !SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
			continue;
		if (pg_class_aclcheck(relid, caller, ACL_SELECT) != ACLCHECK_OK)
		{
			if (!raise)
				return false;
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for table %s", get_rel_name(relid)),
					 errdetail("Role \"%s\" needs the SELECT privilege on every table of the stream: its records show whole rows.",
							   GetUserNameFromId(caller, false))));
		}
		if (check_enable_rls(relid, caller, true) == RLS_ENABLED)
		{
			if (!raise)
				return false;
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("table %s has row-level security enabled", get_rel_name(relid)),
					 errdetail("A stream carries every row, so role \"%s\" would see rows its policies hide.",
							   GetUserNameFromId(caller, false)),
					 errhint("Use a role that bypasses row-level security (BYPASSRLS, or the table's owner).")));
		}
	}
	return true;
}

/* Refuses a caller that may not read every row of every table given (see may_read). */
Datum
event_bridge_check_readable(PG_FUNCTION_ARGS)
{
	(void) may_read(eb_api_caller(), PG_GETARG_ARRAYTYPE_P(0), true);
	PG_RETURN_VOID();
}

/*
 * May the caller see a record of table_name ("schema.table", as records
 * name it) kept apart from its stream (a dead letter)?  Superusers may;
 * others only while the table is still one of the stream's tables, by that
 * name, and they may read every table of the stream.  A dropped or renamed
 * table's records show to superusers only.
 */
Datum
event_bridge_may_read_record(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	char	   *table_name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	Oid			caller = eb_api_caller();
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	if (superuser_arg(caller))
		PG_RETURN_BOOL(true);
	if (!may_read(caller, arr, false))
		PG_RETURN_BOOL(false);
	deconstruct_array(arr, REGCLASSOID, sizeof(Oid), true, TYPALIGN_INT, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
	{
		Oid			relid = DatumGetObjectId(elems[i]);
		char	   *relname;
		char	   *nspname;

		if (nulls[i] || (relname = get_rel_name(relid)) == NULL)
			continue;
		nspname = get_namespace_name(get_rel_namespace(relid));
		if (nspname != NULL && strcmp(psprintf("%s.%s", nspname, relname), table_name) == 0)
			PG_RETURN_BOOL(true);
	}
	PG_RETURN_BOOL(false);
}

/*
 * Replaces the text of the running statement in pg_stat_activity, where it
 * would stay after the call: the arguments of the calling function hold
 * secrets.
 */
Datum
event_bridge_hide_statement(PG_FUNCTION_ARGS)
{
	pgstat_report_activity(STATE_RUNNING,
						   "/* event_bridge: statement hidden, its arguments hold secrets */");
	PG_RETURN_VOID();
}
