-- PostgreSQL only: the ledger refuses UPDATE, DELETE and TRUNCATE at the database, whoever asks.
CREATE FUNCTION cogward_ledger_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'cogward ledger is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION cogward_ledger_append_only();

CREATE TRIGGER ledger_entries_no_truncate
    BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION cogward_ledger_append_only();
