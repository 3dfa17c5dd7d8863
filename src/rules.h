/*-------------------------------------------------------------------------
 *
 * rules.h
 *	  A connector's filter and transform (EventGrid's rule_config), as the
 *	  delivery path applies them to events.
 *
 * IDENTIFICATION
 *	  src/rules.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVENT_BRIDGE_RULES_H
#define EVENT_BRIDGE_RULES_H

#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/jsonb.h"

/* A transform, parsed once: NULL stands for ORIGINAL. */
typedef struct RuleTransform RuleTransform;

extern void rules_check_filter(Jsonb *filter);
extern bool rules_filter_matches(Jsonb *filter, Jsonb *event);
extern RuleTransform *rules_prepare_transform(Jsonb *transform);
extern bool rules_transform_reads_event(const RuleTransform *t);
extern void rules_transform_append(StringInfo out, const RuleTransform *t, Jsonb *event,
								   size_t limit);

#endif							/* EVENT_BRIDGE_RULES_H */
