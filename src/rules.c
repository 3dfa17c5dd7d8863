/*-------------------------------------------------------------------------
 *
 * rules.c
 *	  A connector's event filter (DESIGN 9.5): Huawei EventGrid's event-rule
 *	  filter syntax, checked when it is set and evaluated in C on the
 *	  delivery path, on an event {"eventId","op","table","before","after"}.
 *
 * A filter mirrors the event's structure: an object whose keys name event
 * fields.  A key's value is an object (go one level deeper, e.g. "after":
 * {"status": ...}), an array of conditions, any of which may hold (OR), or
 * {"and": [conditions]}, all of which must hold.  The keys of one object
 * must all hold (AND).  A condition is {"op": <operator>} with "values" (a
 * non-empty array) or "value" (a number) as the operator wants:
 *
 *	StringIn, StringNotIn, StringStartsWith, StringNotStartsWith,
 *	StringEndsWith, StringNotEndsWith			values: strings
 *	NumberIn, NumberNotIn						values: numbers
 *	NumberLessThan, NumberNotLessThan (>=),
 *	NumberGreaterThan, NumberNotGreaterThan (<=)	value: a number
 *	NumberInRange, NumberNotInRange				values: [lo, hi] pairs, inclusive
 *	IsNull, IsNotNull, IsTrue, IsNotTrue		no operand
 *
 * Semantics, as EventGrid documents them and, where it is silent, as
 * decided here: a field that is missing (or under a null or non-object
 * parent) is null, so IsNull holds for it and every operator but IsNull
 * and IsNotNull fails; String and Number operators need a field of their
 * type (a string "10" is no number), else they fail, the Not ones too; a
 * field that is an array holds for a positive operator if any element
 * does, and for a Not operator if no element holds for its positive;
 * strings compare exactly (case, code points); numbers compare as
 * PostgreSQL numeric, so bigint keys compare exactly; IsNotTrue holds only
 * for false.
 *
 * Limits, EventGrid's: at most 5 conditions per field, 5 levels of nesting,
 * 2048 bytes of filter text; and at most 10 fields in all.
 *
 * IDENTIFICATION
 *	  src/rules.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

PG_FUNCTION_INFO_V1(event_bridge_check_filter);
PG_FUNCTION_INFO_V1(event_bridge_filter_matches);

#define EB_FILTER_MAX_CONDITIONS	5
#define EB_FILTER_MAX_DEPTH			5
#define EB_FILTER_MAX_FIELDS		10
#define EB_FILTER_MAX_BYTES			2048

/* The operators, and what each takes and tests. */
typedef enum OperandKind
{
	OPERAND_NONE,
	OPERAND_STRINGS,			/* values: strings */
	OPERAND_NUMBERS,			/* values: numbers */
	OPERAND_NUMBER,				/* value: a number */
	OPERAND_RANGES				/* values: [lo, hi] pairs */
} OperandKind;

typedef enum Test
{
	TEST_EQUAL,
	TEST_PREFIX,
	TEST_SUFFIX,
	TEST_LESS,
	TEST_GREATER_OR_EQUAL,
	TEST_GREATER,
	TEST_LESS_OR_EQUAL,
	TEST_IN_RANGE,
	TEST_NULL,
	TEST_TRUE
} Test;

typedef struct Operator
{
	const char *name;
	OperandKind operand;
	Test		test;
	bool		negated;		/* holds where no element holds for the test */
} Operator;

static const Operator operators[] = {
	{"StringIn", OPERAND_STRINGS, TEST_EQUAL, false},
	{"StringNotIn", OPERAND_STRINGS, TEST_EQUAL, true},
	{"StringStartsWith", OPERAND_STRINGS, TEST_PREFIX, false},
	{"StringNotStartsWith", OPERAND_STRINGS, TEST_PREFIX, true},
	{"StringEndsWith", OPERAND_STRINGS, TEST_SUFFIX, false},
	{"StringNotEndsWith", OPERAND_STRINGS, TEST_SUFFIX, true},
	{"NumberIn", OPERAND_NUMBERS, TEST_EQUAL, false},
	{"NumberNotIn", OPERAND_NUMBERS, TEST_EQUAL, true},
	{"NumberLessThan", OPERAND_NUMBER, TEST_LESS, false},
	{"NumberNotLessThan", OPERAND_NUMBER, TEST_GREATER_OR_EQUAL, false},
	{"NumberGreaterThan", OPERAND_NUMBER, TEST_GREATER, false},
	{"NumberNotGreaterThan", OPERAND_NUMBER, TEST_LESS_OR_EQUAL, false},
	{"NumberInRange", OPERAND_RANGES, TEST_IN_RANGE, false},
	{"NumberNotInRange", OPERAND_RANGES, TEST_IN_RANGE, true},
	{"IsNull", OPERAND_NONE, TEST_NULL, false},
	{"IsNotNull", OPERAND_NONE, TEST_NULL, true},
	{"IsTrue", OPERAND_NONE, TEST_TRUE, false},
	{"IsNotTrue", OPERAND_NONE, TEST_TRUE, false},
};

/* ---------------------------------------------------------------------
 * Checking a filter
 * ------------------------------------------------------------------- */

/* Refuses a filter, naming where in it the problem is. */
static void
pg_attribute_noreturn()
refuse(const char *path, const char *problem, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid filter at \"%s\": %s", path, problem),
			 hint ? errhint("%s", hint) : 0));
}

static const char *
jsonb_type_name(const JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			return "null";
		case jbvString:
			return "a string";
		case jbvNumeric:
			return "a number";
		case jbvBool:
			return "a boolean";
		case jbvBinary:
			return JsonContainerIsArray(v->val.binary.data) ? "an array" : "an object";
		default:
			return "a JSON value";
	}
}

static const Operator *
find_operator(const JsonbValue *name)
{
	for (int i = 0; i < lengthof(operators); i++)
		if (name->type == jbvString && strlen(operators[i].name) == name->val.string.len &&
			memcmp(operators[i].name, name->val.string.val, name->val.string.len) == 0)
			return &operators[i];
	return NULL;
}

/* The value of key in an object container, or NULL. */
static JsonbValue *
member(JsonbContainer *object, const char *key)
{
	return getKeyJsonValueFromContainer(object, key, strlen(key), NULL);
}

static bool
is_container(const JsonbValue *v, bool array)
{
	return v != NULL && v->type == jbvBinary &&
		(JsonContainerIsArray(v->val.binary.data) != 0) == array;
}

/* Checks that a [lo, hi] element of NumberInRange's values is one. */
static void
check_range(const char *path, JsonbValue *pair)
{
	JsonbValue *lo;
	JsonbValue *hi;

	if (!is_container(pair, true) || JsonContainerSize(pair->val.binary.data) != 2 ||
		(lo = getIthJsonbValueFromContainer(pair->val.binary.data, 0))->type != jbvNumeric ||
		(hi = getIthJsonbValueFromContainer(pair->val.binary.data, 1))->type != jbvNumeric)
		refuse(path, "a range must be an array of two numbers, [low, high]", NULL);
	if (DatumGetBool(DirectFunctionCall2(numeric_gt, NumericGetDatum(lo->val.numeric),
										 NumericGetDatum(hi->val.numeric))))
		refuse(path, "a range's low end is above its high end", NULL);
}

/* Checks one condition {"op": ..., "values"/"value": ...}. */
static void
check_condition(const char *path, JsonbValue *cond)
{
	JsonbValue *op;
	JsonbValue *values;
	JsonbValue *value;
	const Operator *o;

	if (!is_container(cond, false))
		refuse(path, psprintf("a condition must be an object, not %s", jsonb_type_name(cond)),
			   "A condition is like {\"op\": \"StringIn\", \"values\": [\"a\", \"b\"]}.");
	op = member(cond->val.binary.data, "op");
	if (op == NULL)
		refuse(path, "a condition lacks \"op\"", NULL);
	o = find_operator(op);
	if (o == NULL)
		refuse(path, op->type == jbvString ?
			   psprintf("unknown operator \"%.*s\"", op->val.string.len, op->val.string.val) :
			   "\"op\" must be a string",
			   "The operators are StringIn, StringNotIn, StringStartsWith, StringNotStartsWith, "
			   "StringEndsWith, StringNotEndsWith, NumberIn, NumberNotIn, NumberLessThan, "
			   "NumberNotLessThan, NumberGreaterThan, NumberNotGreaterThan, NumberInRange, "
			   "NumberNotInRange, IsNull, IsNotNull, IsTrue and IsNotTrue.");
	values = member(cond->val.binary.data, "values");
	value = member(cond->val.binary.data, "value");
	if (JsonContainerSize(cond->val.binary.data) >
		1 + (o->operand == OPERAND_NONE ? 0 : 1))
		refuse(path, psprintf("%s takes %s", o->name,
							  o->operand == OPERAND_NONE ? "no operand" :
							  o->operand == OPERAND_NUMBER ? "\"value\" only" : "\"values\" only"),
			   NULL);
	switch (o->operand)
	{
		case OPERAND_NONE:
			break;
		case OPERAND_NUMBER:
			if (value == NULL || value->type != jbvNumeric)
				refuse(path, psprintf("%s needs \"value\", a number", o->name), NULL);
			break;
		case OPERAND_STRINGS:
		case OPERAND_NUMBERS:
		case OPERAND_RANGES:
			if (!is_container(values, true) || JsonContainerSize(values->val.binary.data) == 0)
				refuse(path, psprintf("%s needs \"values\", a non-empty array", o->name), NULL);
			for (uint32 i = 0; i < JsonContainerSize(values->val.binary.data); i++)
			{
				JsonbValue *v = getIthJsonbValueFromContainer(values->val.binary.data, i);

				if (o->operand == OPERAND_RANGES)
					check_range(path, v);
				else if (v->type != (o->operand == OPERAND_STRINGS ? jbvString : jbvNumeric))
					refuse(path, psprintf("the values of %s must be %s, not %s", o->name,
										  o->operand == OPERAND_STRINGS ? "strings" : "numbers",
										  jsonb_type_name(v)), NULL);
			}
			break;
	}
}

/* Checks a list of conditions: an array (any), or {"and": [...]} (all). */
static void
check_conditions(const char *path, JsonbValue *list)
{
	uint32		n;

	if (is_container(list, false))
		list = member(list->val.binary.data, "and");
	if (!is_container(list, true))
		refuse(path, "expected an array of conditions or {\"and\": [conditions]}", NULL);
	n = JsonContainerSize(list->val.binary.data);
	if (n == 0 || n > EB_FILTER_MAX_CONDITIONS)
		refuse(path, psprintf("a field takes 1 to %d conditions, not %u",
							  EB_FILTER_MAX_CONDITIONS, n), NULL);
	for (uint32 i = 0; i < n; i++)
		check_condition(psprintf("%s[%u]", path, i),
						getIthJsonbValueFromContainer(list->val.binary.data, i));
}

/* Is an object {"and": [...]}, a list of conditions rather than a level? */
static bool
is_and_list(JsonbValue *v)
{
	return is_container(v, false) && JsonContainerSize(v->val.binary.data) == 1 &&
		is_container(member(v->val.binary.data, "and"), true);
}

/* Checks a level of the filter: an object of fields.  Counts the fields. */
static void
check_level(const char *path, JsonbContainer *level, int depth, int *fields)
{
	JsonbIterator *it = JsonbIteratorInit(level);
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;

	if (JsonContainerSize(level) == 0)
		refuse(path[0] ? path : "$", "an object of fields must not be empty", NULL);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *here;

		if (tok == WJB_KEY)
		{
			key = pnstrdup(v.val.string.val, v.val.string.len);
			if (depth == 0 && strcmp(key, "eventId") != 0 && strcmp(key, "op") != 0 &&
				strcmp(key, "table") != 0 && strcmp(key, "before") != 0 &&
				strcmp(key, "after") != 0)
				refuse(key, "not a field of the event",
					   "An event has the fields eventId, op, table, before and after (the row's columns).");
			continue;
		}
		if (tok != WJB_VALUE)
			continue;
		here = path[0] ? psprintf("%s.%s", path, key) : key;
		if (is_container(&v, false) && !is_and_list(&v))
		{
			if (depth + 1 >= EB_FILTER_MAX_DEPTH)
				refuse(here, psprintf("a filter nests at most %d levels", EB_FILTER_MAX_DEPTH), NULL);
			check_level(here, v.val.binary.data, depth + 1, fields);
			continue;
		}
		if (++*fields > EB_FILTER_MAX_FIELDS)
			refuse(here, psprintf("a filter tests at most %d fields", EB_FILTER_MAX_FIELDS), NULL);
		check_conditions(here, &v);
	}
}

/* Refuses a filter that is not one (ERROR with the part at fault). */
static void
check_filter(Jsonb *filter)
{
	int			fields = 0;
	char	   *text = JsonbToCString(NULL, &filter->root, VARSIZE(filter));

	if (strlen(text) > EB_FILTER_MAX_BYTES)
		refuse("$", psprintf("a filter is at most %d bytes of JSON", EB_FILTER_MAX_BYTES), NULL);
	if (!JB_ROOT_IS_OBJECT(filter))
		refuse("$", "a filter must be a JSON object",
			   "A filter is like {\"op\": [{\"op\": \"StringIn\", \"values\": [\"INSERT\"]}]}.");
	check_level("", &filter->root, 0, &fields);
}

/* ---------------------------------------------------------------------
 * Evaluating a filter
 * ------------------------------------------------------------------- */

static int
compare_numeric(Numeric a, Numeric b)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(a),
											 NumericGetDatum(b)));
}

/* Does one scalar x pass the operator's test against one operand c? */
static bool
test_one(const Operator *o, const JsonbValue *x, const JsonbValue *c)
{
	int			xl;
	int			cl;

	if (o->operand == OPERAND_STRINGS)
	{
		xl = x->val.string.len;
		cl = c->val.string.len;
		switch (o->test)
		{
			case TEST_EQUAL:
				return xl == cl && memcmp(x->val.string.val, c->val.string.val, cl) == 0;
			case TEST_PREFIX:
				return xl >= cl && memcmp(x->val.string.val, c->val.string.val, cl) == 0;
			case TEST_SUFFIX:
				return xl >= cl &&
					memcmp(x->val.string.val + xl - cl, c->val.string.val, cl) == 0;
			default:
				return false;
		}
	}
	if (o->operand == OPERAND_RANGES)
	{
		JsonbValue *lo = getIthJsonbValueFromContainer(c->val.binary.data, 0);
		JsonbValue *hi = getIthJsonbValueFromContainer(c->val.binary.data, 1);

		return compare_numeric(x->val.numeric, lo->val.numeric) >= 0 &&
			compare_numeric(x->val.numeric, hi->val.numeric) <= 0;
	}
	switch (o->test)
	{
		case TEST_EQUAL:
			return compare_numeric(x->val.numeric, c->val.numeric) == 0;
		case TEST_LESS:
			return compare_numeric(x->val.numeric, c->val.numeric) < 0;
		case TEST_GREATER_OR_EQUAL:
			return compare_numeric(x->val.numeric, c->val.numeric) >= 0;
		case TEST_GREATER:
			return compare_numeric(x->val.numeric, c->val.numeric) > 0;
		case TEST_LESS_OR_EQUAL:
			return compare_numeric(x->val.numeric, c->val.numeric) <= 0;
		default:
			return false;
	}
}

/* Does one scalar x pass the positive test of an operator against any operand? */
static bool
test_scalar(const Operator *o, JsonbContainer *cond, const JsonbValue *x)
{
	JsonbValue *values;

	if (x->type != (o->operand == OPERAND_STRINGS ? jbvString : jbvNumeric))
		return false;
	if (o->operand == OPERAND_NUMBER)
		return test_one(o, x, member(cond, "value"));
	values = member(cond, "values");
	for (uint32 i = 0; i < JsonContainerSize(values->val.binary.data); i++)
		if (test_one(o, x, getIthJsonbValueFromContainer(values->val.binary.data, i)))
			return true;
	return false;
}

/*
 * Does a field x (NULL: missing) satisfy one condition?  A String or
 * Number operator needs x of its type, or an array of such elements.
 */
static bool
condition_holds(JsonbContainer *cond, const JsonbValue *x)
{
	const Operator *o = find_operator(member(cond, "op"));
	bool		any = false;
	bool		typed = false;

	if (o->test == TEST_NULL)
		return (x == NULL || x->type == jbvNull) != o->negated;
	if (o->test == TEST_TRUE)
		return x != NULL && x->type == jbvBool &&
			x->val.boolean == (strcmp(o->name, "IsTrue") == 0);
	if (x == NULL)
		return false;
	if (is_container(x, true))
	{
		JsonbContainer *arr = x->val.binary.data;
		uint32		n = JsonContainerSize(arr);

		for (uint32 i = 0; i < n; i++)
		{
			JsonbValue *e = getIthJsonbValueFromContainer(arr, i);

			typed = typed || e->type == (o->operand == OPERAND_STRINGS ? jbvString : jbvNumeric);
			any = any || test_scalar(o, cond, e);
		}
		/* An array holds for a Not operator only if all its elements are of its type. */
		if (o->negated)
		{
			for (uint32 i = 0; i < n; i++)
				if (getIthJsonbValueFromContainer(arr, i)->type !=
					(o->operand == OPERAND_STRINGS ? jbvString : jbvNumeric))
					return false;
			return n > 0 && !any;
		}
		return any;
	}
	if (x->type != (o->operand == OPERAND_STRINGS ? jbvString : jbvNumeric))
		return false;
	return test_scalar(o, cond, x) != o->negated;
}

/* Does a field satisfy a list of conditions: any of an array, all of {"and"}? */
static bool
conditions_hold(JsonbValue *list, const JsonbValue *x)
{
	bool		all = is_and_list(list);
	JsonbContainer *arr = all ? member(list->val.binary.data, "and")->val.binary.data :
		list->val.binary.data;

	for (uint32 i = 0; i < JsonContainerSize(arr); i++)
	{
		bool		holds = condition_holds(getIthJsonbValueFromContainer(arr, i)->val.binary.data, x);

		if (holds != all)
			return holds;
	}
	return all;
}

/* Does the event level (NULL: missing or not an object) match a filter level? */
static bool
level_matches(JsonbContainer *level, JsonbContainer *event)
{
	JsonbIterator *it = JsonbIteratorInit(level);
	JsonbValue	v;
	JsonbValue	key = {0};
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		JsonbValue *x;

		if (tok == WJB_KEY)
		{
			key = v;
			continue;
		}
		if (tok != WJB_VALUE)
			continue;
		x = event ? getKeyJsonValueFromContainer(event, key.val.string.val,
												 key.val.string.len, NULL) : NULL;
		if (is_container(&v, false) && !is_and_list(&v))
		{
			if (!level_matches(v.val.binary.data, is_container(x, false) ? x->val.binary.data : NULL))
				return false;
		}
		else if (!conditions_hold(&v, x))
			return false;
	}
	return true;
}

/* Does an event match a filter that check_filter accepted? */
static bool
filter_matches(Jsonb *filter, Jsonb *event)
{
	return level_matches(&filter->root, JB_ROOT_IS_OBJECT(event) ? &event->root : NULL);
}

/* SQL: refuses a filter that is not one, saying where. */
Datum
event_bridge_check_filter(PG_FUNCTION_ARGS)
{
	check_filter(PG_GETARG_JSONB_P(0));
	PG_RETURN_VOID();
}

/* SQL: does an event match a filter?  For tests; refuses a bad filter. */
Datum
event_bridge_filter_matches(PG_FUNCTION_ARGS)
{
	Jsonb	   *filter = PG_GETARG_JSONB_P(0);

	check_filter(filter);
	PG_RETURN_BOOL(filter_matches(filter, PG_GETARG_JSONB_P(1)));
}
