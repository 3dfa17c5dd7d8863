
/* Last: start this database's workers once the transaction commits. */
SELECT event_bridge._extension_created();
