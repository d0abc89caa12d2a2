-- databricks_auth 1.1 for the lakebase emulator.
-- databricks_create_role(identity, type) creates a LOGIN role for a Databricks identity the workspace
-- knows and marks it as an OAuth role (the emulator's proxy then accepts that identity's tokens).
-- The workspace's identities are read from databricks_auth_identities.json in the data directory,
-- which the emulator keeps up to date (1.0 read the file named by a setting any session could change).

\echo Use "CREATE EXTENSION databricks_auth" to load this file. \quit

CREATE OR REPLACE FUNCTION databricks_create_role(identity text, identity_type text)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog
AS $fn$
DECLARE
    wanted text := upper(coalesce(identity_type, ''));
    known jsonb;
    actual text;
BEGIN
    IF identity IS NULL OR length(identity) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'identity must not be empty',
            HINT = 'Pass a user''s email, a service principal''s application id or a group name.';
    END IF;
    IF wanted NOT IN ('USER', 'SERVICE_PRINCIPAL', 'GROUP') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('invalid identity type "%s"', identity_type),
            HINT = 'The type is one of USER, SERVICE_PRINCIPAL or GROUP.';
    END IF;
    -- A fixed file in the data directory, which only the emulator writes; whatever goes wrong
    -- reading it, nothing of it is shown.
    BEGIN
        known := pg_read_file('databricks_auth_identities.json', true)::jsonb;
    EXCEPTION WHEN OTHERS THEN
        known := NULL;
    END;
    IF known IS NULL OR jsonb_typeof(known) <> 'object' THEN
        RAISE EXCEPTION USING ERRCODE = '58000',
            MESSAGE = 'the workspace''s identities are not available to databricks_auth',
            HINT = 'Restart the lakebase emulator: it writes them when it starts.';
    END IF;
    actual := known ->> identity;
    IF actual IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('identity "%s" of type %s was not found in the workspace', identity, wanted),
            HINT = 'Use the email of a workspace user, the application id (DATABRICKS_CLIENT_ID) of a service principal, or a group name.';
    END IF;
    IF actual <> wanted THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('identity "%s" is a %s, not a %s', identity, actual, wanted),
            HINT = format('Call databricks_create_role(%L, %L).', identity, lower(actual));
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = identity) THEN
        RAISE EXCEPTION USING ERRCODE = '42710',
            MESSAGE = format('role "%s" already exists', identity);
    END IF;
    EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT', identity);
    EXECUTE format('ALTER ROLE %I SET databricks_auth.identity_type = %L', identity, wanted);
    RETURN identity;
END
$fn$;

REVOKE ALL ON FUNCTION databricks_create_role(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION databricks_create_role(text, text) TO databricks_superuser;
