-- test/bench/trigger.sql: the trigger-based baseline (the model behind
-- trigger webhooks).  An AFTER ROW trigger writes every change of trg_t as
-- JSON to a queue table; test/bench/trigger_drain.c drains the queue and
-- POSTs one request per row.
CREATE TABLE trg_t (id int PRIMARY KEY, customer text, amount numeric(10,2),
                    created timestamptz DEFAULT now());
CREATE TABLE bench_queue (id bigserial PRIMARY KEY, payload text NOT NULL);

CREATE FUNCTION bench_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_queue (payload)
    VALUES (json_build_object('op', TG_OP, 'table', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
                              'commit_ms', (extract(epoch FROM now()) * 1000)::bigint,
                              'row', CASE WHEN TG_OP = 'DELETE' THEN row_to_json(OLD)
                                          ELSE row_to_json(NEW) END)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER bench_enqueue AFTER INSERT OR UPDATE OR DELETE ON trg_t
    FOR EACH ROW EXECUTE FUNCTION bench_enqueue();
