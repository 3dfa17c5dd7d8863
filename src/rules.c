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
 * A connector's transform is EventGrid's TransForm object: {"type":
 * "ORIGINAL"} sends the event as it is; {"type": "CONSTANT", "value": "..."}
 * sends the value (as JSON if it is JSON, else as a JSON string) in place
 * of each event; {"type": "VARIABLE", "value": "<a JSON object as a
 * string>", "template": "..."} takes each variable's value from the event
 * (an expression starting with "$" is a JSONPath: $, .name, ['name'],
 * [index]; any other is a constant string) and renders the template with
 * ${name} replaced.  The template must be JSON once rendered: a value goes
 * in as JSON (a string quoted, a missing value as null), or, inside a JSON
 * string of the template, as string content (a missing value as nothing).
 * EventGrid's limits: at most 100 variables, named [A-Za-z0-9][A-Za-z0-9._-]
 * up to 64 characters and not starting with "HC."; expressions up to 1024
 * characters; a template up to 2048.
 *
 * IDENTIFICATION
 *	  src/rules.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/jsonapi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/json.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "rules.h"

PG_FUNCTION_INFO_V1(event_bridge_check_filter);
PG_FUNCTION_INFO_V1(event_bridge_filter_matches);
PG_FUNCTION_INFO_V1(event_bridge_check_transform);
PG_FUNCTION_INFO_V1(event_bridge_transform_event);

#define EB_FILTER_MAX_CONDITIONS	5
#define EB_FILTER_MAX_DEPTH			5
#define EB_FILTER_MAX_FIELDS		10
#define EB_FILTER_MAX_BYTES			2048
#define EB_TRANSFORM_MAX_VARIABLES	100
#define EB_TRANSFORM_MAX_NAME		64
#define EB_TRANSFORM_MAX_EXPRESSION	1024
#define EB_TRANSFORM_MAX_TEMPLATE	2048

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

/* Refuses a rule ("filter", "transform"), naming where in it the problem is. */
static void
pg_attribute_noreturn()
refuse_rule(const char *rule, const char *where, const char *problem, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid %s%s%s: %s", rule, where[0] ? " " : "", where, problem),
			 hint ? errhint("%s", hint) : 0));
}

/* Refuses a filter, naming the path in it at fault. */
static void
pg_attribute_noreturn()
refuse(const char *path, const char *problem, const char *hint)
{
	refuse_rule("filter", psprintf("at \"%s\"", path), problem, hint);
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

/* The JSON type a String or Number operator tests. */
static enum jbvType
operand_type(const Operator *o)
{
	return o->operand == OPERAND_STRINGS ? jbvString : jbvNumeric;
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
				else if (v->type != operand_type(o))
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

	if (x->type != operand_type(o))
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
		bool		any = false;
		bool		all_typed = true;

		for (uint32 i = 0; i < n; i++)
		{
			JsonbValue *e = getIthJsonbValueFromContainer(arr, i);

			all_typed = all_typed && e->type == operand_type(o);
			any = any || test_scalar(o, cond, e);
		}
		/* A Not operator holds for an array of its type none of whose elements holds. */
		return o->negated ? n > 0 && all_typed && !any : any;
	}
	if (x->type != operand_type(o))
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

/* ---------------------------------------------------------------------
 * Transforms
 * ------------------------------------------------------------------- */

/* Refuses a transform, naming the part at fault. */
static void
pg_attribute_noreturn()
refuse_transform(const char *part, const char *problem, const char *hint)
{
	refuse_rule("transform", part, problem, hint);
}

/* A string member of an object, as a C string, or NULL if missing or not a string. */
static char *
member_string(JsonbContainer *object, const char *key)
{
	JsonbValue *v = member(object, key);

	return v && v->type == jbvString ? pnstrdup(v->val.string.val, v->val.string.len) : NULL;
}

/* Is text valid JSON? */
static bool
is_json(const char *text)
{
	JsonLexContext *lex = makeJsonLexContextCstringLen(unconstify(char *, text), strlen(text),
													   GetDatabaseEncoding(), false);

	return pg_parse_json(lex, &nullSemAction) == JSON_SUCCESS;
}

/*
 * Follows a JSONPath of the supported subset ($, .name, ['name'], [n]) in
 * an event.  Returns the value found, or NULL: missing.  With event NULL,
 * only checks the path, returning NULL, or sets *bad to why it cannot be
 * followed.
 */
static JsonbValue *
follow_path(const char *path, JsonbContainer *event, const char **bad)
{
	const char *p = path + 1;
	JsonbValue *cur = NULL;

	if (event != NULL)
	{
		cur = palloc(sizeof(JsonbValue));
		cur->type = jbvBinary;
		cur->val.binary.data = event;
		cur->val.binary.len = 0;
	}
	while (*p)
	{
		char	   *key = NULL;
		long		index = -1;

		if (*p == '.')
		{
			const char *start = ++p;

			while (*p && *p != '.' && *p != '[')
				p++;
			if (p == start)
			{
				*bad = "an empty name after \".\" (\"..\" is not supported)";
				return NULL;
			}
			key = pnstrdup(start, p - start);
		}
		else if (p[0] == '[' && p[1] == '\'')
		{
			const char *start = p + 2;
			const char *end = strstr(start, "']");

			if (end == NULL)
			{
				*bad = "an unclosed ['name']";
				return NULL;
			}
			key = pnstrdup(start, end - start);
			p = end + 2;
		}
		else if (p[0] == '[' && isdigit((unsigned char) p[1]))
		{
			char	   *end;

			index = strtol(p + 1, &end, 10);
			if (*end != ']')
			{
				*bad = "an index must be [digits]";
				return NULL;
			}
			p = end + 1;
		}
		else
		{
			*bad = "only $, .name, ['name'] and [index] are supported (no wildcards, filters or slices)";
			return NULL;
		}
		if (cur == NULL)
			continue;
		if (key != NULL && is_container(cur, false))
			cur = getKeyJsonValueFromContainer(cur->val.binary.data, key, strlen(key), NULL);
		else if (index >= 0 && is_container(cur, true) &&
				 index < (long) JsonContainerSize(cur->val.binary.data))
			cur = getIthJsonbValueFromContainer(cur->val.binary.data, (uint32) index);
		else
			cur = NULL;
		if (cur == NULL)
			return NULL;
	}
	return cur;
}

/* Is name a variable name EventGrid allows? */
static bool
valid_variable_name(const char *name, int len)
{
	if (len == 0 || len > EB_TRANSFORM_MAX_NAME || !isalnum((unsigned char) name[0]) ||
		(len >= 3 && strncmp(name, "HC.", 3) == 0))
		return false;
	for (int i = 1; i < len; i++)
		if (!isalnum((unsigned char) name[i]) && strchr("._-", name[i]) == NULL)
			return false;
	return true;
}

/*
 * The variables of a VARIABLE transform, checked: a Jsonb object of names
 * to expressions.
 */
static Jsonb *
check_variables(const char *value)
{
	Jsonb	   *vars;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *name = NULL;

	if (!is_json(value))
		refuse_transform("value", "not valid JSON",
						 "The value of a VARIABLE transform is a JSON object as a string, like \"{\\\"id\\\": \\\"$.after.id\\\"}\".");
	vars = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(value)));
	if (!JB_ROOT_IS_OBJECT(vars))
		refuse_transform("value", "not a JSON object", NULL);
	if (JsonContainerSize(&vars->root) > EB_TRANSFORM_MAX_VARIABLES)
		refuse_transform("value", psprintf("at most %d variables", EB_TRANSFORM_MAX_VARIABLES), NULL);
	it = JsonbIteratorInit(&vars->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			name = pnstrdup(v.val.string.val, v.val.string.len);
			if (!valid_variable_name(v.val.string.val, v.val.string.len))
				refuse_transform(psprintf("variable \"%s\"", name), "not a valid name",
								 "A variable name is up to 64 letters, digits, \".\", \"_\" or \"-\", starts with a letter or digit and does not start with \"HC.\".");
			continue;
		}
		if (tok != WJB_VALUE)
			continue;
		if (v.type != jbvString)
			refuse_transform(psprintf("variable \"%s\"", name),
							 psprintf("its expression must be a string, not %s", jsonb_type_name(&v)),
							 NULL);
		if (v.val.string.len > EB_TRANSFORM_MAX_EXPRESSION)
			refuse_transform(psprintf("variable \"%s\"", name),
							 psprintf("its expression is longer than %d characters",
									  EB_TRANSFORM_MAX_EXPRESSION), NULL);
		if (v.val.string.len > 0 && v.val.string.val[0] == '$')
		{
			const char *bad = NULL;

			(void) follow_path(pnstrdup(v.val.string.val, v.val.string.len), NULL, &bad);
			if (bad != NULL)
				refuse_transform(psprintf("variable \"%s\"", name),
								 psprintf("JSONPath \"%.*s\": %s", v.val.string.len,
										  v.val.string.val, bad), NULL);
		}
	}
	return vars;
}

/*
 * Appends a variable's value: as JSON, or as the content of a JSON string
 * (in_string).  A missing value is null, or nothing in a string.
 */
static void
append_variable(StringInfo out, const JsonbValue *x, bool constant, bool in_string)
{
	StringInfoData json;

	if (x == NULL || x->type == jbvNull)
	{
		if (!in_string)
			appendStringInfoString(out, "null");
		return;
	}
	initStringInfo(&json);
	if (constant || x->type == jbvString)
	{
		char	   *s = pnstrdup(x->val.string.val, x->val.string.len);

		escape_json(&json, s);
	}
	else if (x->type == jbvBinary)
		(void) JsonbToCString(&json, x->val.binary.data, x->val.binary.len);
	else if (x->type == jbvNumeric)
		appendStringInfoString(&json, DatumGetCString(DirectFunctionCall1(numeric_out,
																		  NumericGetDatum(x->val.numeric))));
	else
		appendStringInfoString(&json, x->val.boolean ? "true" : "false");

	if (!in_string)
		appendBinaryStringInfo(out, json.data, json.len);
	else if (json.data[0] == '"')
		appendBinaryStringInfo(out, json.data + 1, json.len - 2);
	else
	{
		/* An object, array, number or boolean inside a string: its JSON text, escaped. */
		StringInfoData esc;

		initStringInfo(&esc);
		escape_json(&esc, json.data);
		appendBinaryStringInfo(out, esc.data + 1, esc.len - 2);
	}
}

/*
 * Renders a VARIABLE template for an event (NULL: every value missing, to
 * check the template).  A ${name} that names no variable is refused.  Stops
 * once more than limit bytes were appended (a template may name the whole
 * event many times): the caller finds the result too big.
 */
static void
render_template(StringInfo out, const char *template, Jsonb *vars, JsonbContainer *event,
				size_t limit)
{
	bool		in_string = false;
	int			start = out->len;

	for (const char *p = template; *p; p++)
	{
		if ((size_t) (out->len - start) > limit)
			return;
		if (p[0] == '$' && p[1] == '{')
		{
			const char *end = strchr(p + 2, '}');
			JsonbValue *expr;
			const char *bad = NULL;

			if (end != NULL &&
				(expr = getKeyJsonValueFromContainer(&vars->root, p + 2, end - p - 2, NULL)) != NULL)
			{
				char	   *e = pnstrdup(expr->val.string.val, expr->val.string.len);

				if (e[0] == '$')
					append_variable(out, event ? follow_path(e, event, &bad) : NULL, false, in_string);
				else
					append_variable(out, event ? expr : NULL, true, in_string);
				p = end;
				continue;
			}
			if (end != NULL && valid_variable_name(p + 2, end - p - 2))
				refuse_transform("template", psprintf("${%.*s} names no variable", (int) (end - p - 2), p + 2),
								 "Define it in the transform's value.");
		}
		if (*p == '"')
			in_string = !in_string;
		else if (*p == '\\' && in_string && p[1] != '\0')
		{
			appendStringInfoChar(out, *p++);
		}
		appendStringInfoChar(out, *p);
	}
}

/*
 * Checks a transform; returns its type (ORIGINAL, CONSTANT, VARIABLE).
 * A VARIABLE template must render to JSON.
 */
static const char *
check_transform(Jsonb *transform)
{
	char	   *type;
	char	   *value;
	char	   *template;
	StringInfoData out;

	if (!JB_ROOT_IS_OBJECT(transform))
		refuse_transform("", "a transform must be a JSON object",
						 "A transform is like {\"type\": \"ORIGINAL\"}.");
	type = member_string(&transform->root, "type");
	if (type == NULL || (strcmp(type, "ORIGINAL") != 0 && strcmp(type, "CONSTANT") != 0 &&
						 strcmp(type, "VARIABLE") != 0))
		refuse_transform("type", "must be ORIGINAL, CONSTANT or VARIABLE", NULL);
	value = member_string(&transform->root, "value");
	template = member_string(&transform->root, "template");
	if (strcmp(type, "CONSTANT") == 0 &&
		(value == NULL || strlen(value) > EB_TRANSFORM_MAX_EXPRESSION))
		refuse_transform("value", psprintf("a CONSTANT transform needs \"value\", a string of at most %d characters",
										   EB_TRANSFORM_MAX_EXPRESSION), NULL);
	if (strcmp(type, "VARIABLE") != 0)
		return type;
	if (value == NULL)
		refuse_transform("value", "a VARIABLE transform needs \"value\", its variables as a JSON object in a string", NULL);
	if (template == NULL || strlen(template) > EB_TRANSFORM_MAX_TEMPLATE)
		refuse_transform("template", psprintf("a VARIABLE transform needs \"template\", a string of at most %d characters",
											  EB_TRANSFORM_MAX_TEMPLATE), NULL);
	initStringInfo(&out);
	render_template(&out, template, check_variables(value), NULL, MaxAllocSize);
	if (!is_json(out.data))
		refuse_transform("template", "not JSON once its variables are put in",
						 "A function gets a JSON array of the transformed events, so a template is JSON, like {\"id\": ${id}, \"who\": \"${name}\"}.");
	return type;
}

/* Appends what a transform makes of an event (one element of the body's array). */
static void
transform_event(StringInfo out, Jsonb *transform, Jsonb *event)
{
	char	   *type = member_string(&transform->root, "type");
	char	   *value = member_string(&transform->root, "value");

	if (strcmp(type, "ORIGINAL") == 0)
		(void) JsonbToCString(out, &event->root, VARSIZE(event));
	else if (strcmp(type, "CONSTANT") == 0)
	{
		if (is_json(value))
			appendStringInfoString(out, value);
		else
			escape_json(out, value);
	}
	else
		render_template(out, member_string(&transform->root, "template"),
						check_variables(value), &event->root, MaxAllocSize);
}

/* A transform parsed once, for the delivery path. */
struct RuleTransform
{
	bool		constant;		/* CONSTANT: body is the same for every event */
	char	   *body;			/* CONSTANT: what each event becomes */
	char	   *template;		/* VARIABLE */
	Jsonb	   *vars;			/* VARIABLE: name -> expression */
};

/* Refuses a filter that is not one, naming the part at fault. */
void
rules_check_filter(Jsonb *filter)
{
	check_filter(filter);
}

/* Does an event match a filter that rules_check_filter accepted? */
bool
rules_filter_matches(Jsonb *filter, Jsonb *event)
{
	return filter_matches(filter, event);
}

/*
 * Checks a transform and parses it once, in the current memory context;
 * NULL for ORIGINAL, which leaves events as they are.
 */
RuleTransform *
rules_prepare_transform(Jsonb *transform)
{
	const char *type = check_transform(transform);
	RuleTransform *t;
	StringInfoData out;

	if (strcmp(type, "ORIGINAL") == 0)
		return NULL;
	t = palloc0(sizeof(RuleTransform));
	if (strcmp(type, "CONSTANT") == 0)
	{
		t->constant = true;
		initStringInfo(&out);
		transform_event(&out, transform, NULL);
		t->body = out.data;
		return t;
	}
	t->template = member_string(&transform->root, "template");
	t->vars = check_variables(member_string(&transform->root, "value"));
	return t;
}

/* Does the transform read the event (else the event need not be parsed)? */
bool
rules_transform_reads_event(const RuleTransform *t)
{
	return t == NULL || !t->constant;
}

/*
 * Appends what a prepared transform (not ORIGINAL) makes of an event; a
 * VARIABLE one stops soon after limit bytes (see render_template).
 */
void
rules_transform_append(StringInfo out, const RuleTransform *t, Jsonb *event, size_t limit)
{
	if (t->constant)
		appendStringInfoString(out, t->body);
	else
		render_template(out, t->template, t->vars, &event->root, limit);
}

/* SQL: refuses a transform that is not one, saying where. */
Datum
event_bridge_check_transform(PG_FUNCTION_ARGS)
{
	(void) check_transform(PG_GETARG_JSONB_P(0));
	PG_RETURN_VOID();
}

/* SQL: what a transform makes of an event, as the delivery worker would; for tests. */
Datum
event_bridge_transform_event(PG_FUNCTION_ARGS)
{
	Jsonb	   *transform = PG_GETARG_JSONB_P(0);
	StringInfoData out;

	(void) check_transform(transform);
	initStringInfo(&out);
	transform_event(&out, transform, PG_GETARG_JSONB_P(1));
	PG_RETURN_TEXT_P(cstring_to_text(out.data));
}
