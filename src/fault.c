/*-------------------------------------------------------------------------
 *
 * fault.c
 *	  Fault points for tests: named places in the workers where a test can
 *	  make the process die as if the server had crashed right there.
 *
 * Compiled in only with `make FAULT_INJECTION=1` (test/run_tests.sh builds
 * so); otherwise EB_FAULT_POINT() is empty.  A test arms a point by setting
 * event_bridge.fault_point to its name and reloading.  The first process that
 * reaches it writes the name to $PGDATA/event_bridge.fault_fired and kills
 * itself with SIGKILL, so the postmaster restarts the server.  A point fires
 * once per arming: it stays quiet while that file names it, and the test
 * removes the file to arm it again.
 *
 * An error point (EB_FAULT_ERROR) raises an ERROR instead, every time it is
 * reached while armed: for the code that must survive one.  One for a
 * subject (EB_FAULT_ERROR_FOR, e.g. a connector's name) is armed by
 * "<point>:<subject>".
 *
 * IDENTIFICATION
 *	  src/fault.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>
#include <unistd.h>

#include "miscadmin.h"
#include "utils/guc.h"

#include "event_bridge.h"

#ifdef EB_FAULT_INJECTION

#define EB_FAULT_FIRED_FILE	"event_bridge.fault_fired"

static char *eb_fault_point = NULL;

void
eb_define_fault_guc(void)
{
	DefineCustomStringVariable("event_bridge.fault_point",
							   "Test builds only: the fault point that kills its process once.",
							   NULL,
							   &eb_fault_point,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
}

/* Kills the calling process if the named fault point is armed. */
void
eb_fault(const char *name)
{
	char		fired[NAMEDATALEN] = "";
	FILE	   *f;

	if (eb_fault_point == NULL || strcmp(eb_fault_point, name) != 0)
		return;

	f = fopen(EB_FAULT_FIRED_FILE, "r");
	if (f != NULL)
	{
		if (fgets(fired, sizeof(fired), f) == NULL)
			fired[0] = '\0';
		fclose(f);
		if (strcmp(fired, name) == 0)
			return;
	}

	f = fopen(EB_FAULT_FIRED_FILE, "w");
	if (f != NULL)
	{
		fputs(name, f);
		fflush(f);
		fsync(fileno(f));
		fclose(f);
	}
	ereport(LOG, (errmsg("event_bridge fault point \"%s\" fired", name)));
	kill(MyProcPid, SIGKILL);
}

/* Raises an ERROR if the named error point is armed (for this subject). */
void
eb_fault_error(const char *name, const char *subject)
{
	const char *armed = eb_fault_point;
	size_t		len = strlen(name);

	if (armed == NULL || strncmp(armed, name, len) != 0)
		return;
	if (subject == NULL ? armed[len] != '\0' :
		(armed[len] != ':' || strcmp(armed + len + 1, subject) != 0))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INTERNAL_ERROR),
			 errmsg("event_bridge fault point \"%s\" raised an error", armed)));
}

#endif							/* EB_FAULT_INJECTION */
