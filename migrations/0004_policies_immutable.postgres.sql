-- PostgreSQL only: stored modules, data documents and bundle versions never change.
CREATE FUNCTION cogward_policy_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'cogward policy store is immutable: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER policy_modules_immutable BEFORE UPDATE OR DELETE ON policy_modules
    FOR EACH ROW EXECUTE FUNCTION cogward_policy_immutable();
CREATE TRIGGER policy_data_immutable BEFORE UPDATE OR DELETE ON policy_data
    FOR EACH ROW EXECUTE FUNCTION cogward_policy_immutable();
CREATE TRIGGER policy_bundles_immutable BEFORE UPDATE OR DELETE ON policy_bundles
    FOR EACH ROW EXECUTE FUNCTION cogward_policy_immutable();
