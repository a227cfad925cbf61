-- Tenant isolation enforced by PostgreSQL itself (row-level security), on top of the tenant filter every query
-- already carries. The service connects as a runtime role that is a member of `secur360_runtime`: not a
-- superuser, not BYPASSRLS, not the owner of these tables. Each connection carries `app.tenant_id` (the
-- authenticated tenant) or `app.system` (the named reason of an explicit system context: a webhook, a job, the
-- operator), written by the service every time it takes a connection from its pool (src/db/scope.rs).
-- FORCE makes the policies bind the owner role too; only superusers and BYPASSRLS roles skip them.
-- This migration runs as the owner role; see README "PostgreSQL roles".

CREATE FUNCTION secur360_tenant() RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.tenant_id', true), '') $$;

CREATE FUNCTION secur360_system() RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT COALESCE(current_setting('app.system', true), '') <> '' $$;

-- The group role the runtime login role is granted (created here when the owner may create roles; otherwise a
-- database administrator creates it first, and this only grants to it).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'secur360_runtime') THEN
        CREATE ROLE secur360_runtime NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL; -- created concurrently by another database's migration on the same cluster
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    -- Tenant-owned rows: a tenant sees and writes only its own; rows of no tenant only in a system context.
    FOREACH t IN ARRAY ARRAY['sites', 'api_keys', 'workers', 'customers', 'subscriptions', 'invoices',
        'billing_events', 'sms_alerts', 'sms_messages', 'consent_events', 'phone_verifications', 'rate_limits',
        'system_audit_logs']
    LOOP
        EXECUTE format('CREATE POLICY tenant_isolation ON %I
            USING (secur360_system() OR tenant_id = secur360_tenant())
            WITH CHECK (secur360_system() OR tenant_id = secur360_tenant())', t);
    END LOOP;
    -- A tenant sees its own tenant row; creating, listing and deleting tenants is the operator's (system).
    CREATE POLICY tenant_isolation ON tenants
        USING (secur360_system() OR id = secur360_tenant())
        WITH CHECK (secur360_system() OR id = secur360_tenant());
    -- Platform tables (sessions, provider callbacks, inbound traffic, jobs, configuration): system context only.
    FOREACH t IN ARRAY ARRAY['admin_sessions', 'sms_status_events', 'sms_inbound', 'voice_calls', 'job_runs',
        'config_fingerprints']
    LOOP
        EXECUTE format('CREATE POLICY system_only ON %I USING (secur360_system()) WITH CHECK (secur360_system())', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['tenants', 'sites', 'api_keys', 'workers', 'customers', 'subscriptions', 'invoices',
        'billing_events', 'sms_alerts', 'sms_messages', 'consent_events', 'phone_verifications', 'rate_limits',
        'system_audit_logs', 'admin_sessions', 'sms_status_events', 'sms_inbound', 'voice_calls', 'job_runs',
        'config_fingerprints']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO secur360_runtime', t);
    END LOOP;
END
$$;

-- Identity columns (consent_events, sms_status_events) draw from sequences.
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO secur360_runtime;
-- The runtime role reads the schema version (readiness, status) but never changes it.
GRANT SELECT ON _sqlx_migrations TO secur360_runtime;
