-- uuid-ossp 1.1 for the lakebase emulator: the functions of PostgreSQL's uuid-ossp, written in SQL and
-- PL/pgSQL because the embedded Postgres has no UUID library. Results follow RFC 4122 (9562):
-- v3 and v5 are the name-based UUIDs (MD5, SHA-1) any uuid-ossp returns; v4 is gen_random_uuid();
-- v1 and v1mc are time-based with a random multicast node (RFC 4122 4.5), as v1mc is in uuid-ossp:
-- the emulator cannot read the machine's MAC address that uuid-ossp's v1 puts in the node field.

\echo Use "CREATE EXTENSION ""uuid-ossp""" to load this file. \quit

CREATE FUNCTION uuid_nil() RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN '00000000-0000-0000-0000-000000000000'::uuid;

CREATE FUNCTION uuid_ns_dns() RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN '6ba7b810-9dad-11d1-80b4-00c04fd430c8'::uuid;

CREATE FUNCTION uuid_ns_url() RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN '6ba7b811-9dad-11d1-80b4-00c04fd430c8'::uuid;

CREATE FUNCTION uuid_ns_oid() RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN '6ba7b812-9dad-11d1-80b4-00c04fd430c8'::uuid;

CREATE FUNCTION uuid_ns_x500() RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN '6ba7b814-9dad-11d1-80b4-00c04fd430c8'::uuid;

-- SHA-1 (FIPS 180-4), for v5: Postgres has md5() and sha224()..sha512() built in, but no SHA-1.
CREATE FUNCTION uuid_ossp_emulator_sha1(msg bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog
AS $fn$
DECLARE
    m constant bigint := 4294967295;
    bitlen constant bigint := length(msg)::bigint * 8;
    data bytea;
    h0 bigint := 1732584193; h1 bigint := 4023233417; h2 bigint := 2562383102;
    h3 bigint := 271733878;  h4 bigint := 3285377520;
    a bigint; b bigint; c bigint; d bigint; e bigint; f bigint; k bigint; t bigint;
    w bigint[] := array_fill(0::bigint, ARRAY[80]);
    off int; i int;
BEGIN
    data := msg || '\x80'::bytea
        || decode(repeat('00', ((119 - length(msg) % 64) % 64)), 'hex')
        || int8send(bitlen);
    FOR off IN 0 .. length(data) - 1 BY 64 LOOP
        FOR i IN 0 .. 15 LOOP
            w[i + 1] := (get_byte(data, off + 4 * i)::bigint << 24) | (get_byte(data, off + 4 * i + 1) << 16)
                      | (get_byte(data, off + 4 * i + 2) << 8) | get_byte(data, off + 4 * i + 3);
        END LOOP;
        FOR i IN 17 .. 80 LOOP
            t := w[i - 3] # w[i - 8] # w[i - 14] # w[i - 16];
            w[i] := ((t << 1) | (t >> 31)) & m;
        END LOOP;
        a := h0; b := h1; c := h2; d := h3; e := h4;
        FOR i IN 1 .. 80 LOOP
            IF i <= 20 THEN
                f := (b & c) | ((b # m) & d); k := 1518500249;
            ELSIF i <= 40 THEN
                f := b # c # d; k := 1859775393;
            ELSIF i <= 60 THEN
                f := (b & c) | (b & d) | (c & d); k := 2400959708;
            ELSE
                f := b # c # d; k := 3395469782;
            END IF;
            t := ((((a << 5) | (a >> 27)) & m) + f + e + k + w[i]) & m;
            e := d; d := c; c := ((b << 30) | (b >> 2)) & m; b := a; a := t;
        END LOOP;
        h0 := (h0 + a) & m; h1 := (h1 + b) & m; h2 := (h2 + c) & m; h3 := (h3 + d) & m; h4 := (h4 + e) & m;
    END LOOP;
    RETURN substr(int8send(h0), 5) || substr(int8send(h1), 5) || substr(int8send(h2), 5)
        || substr(int8send(h3), 5) || substr(int8send(h4), 5);
END
$fn$;

-- The version nibble and the RFC 4122 variant bits on 16 bytes.
CREATE FUNCTION uuid_ossp_emulator_format(raw bytea, version int) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN encode(
    set_byte(set_byte(substr(raw, 1, 16), 6, (get_byte(raw, 6) & 15) | (version << 4)),
             8, (get_byte(raw, 8) & 63) | 128), 'hex')::uuid;

CREATE FUNCTION uuid_generate_v3(namespace uuid, name text) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN uuid_ossp_emulator_format(
    decode(pg_catalog.md5(uuid_send(namespace) || convert_to(name, 'UTF8')), 'hex'), 3);

CREATE FUNCTION uuid_generate_v5(namespace uuid, name text) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN uuid_ossp_emulator_format(
    uuid_ossp_emulator_sha1(uuid_send(namespace) || convert_to(name, 'UTF8')), 5);

CREATE FUNCTION uuid_generate_v4() RETURNS uuid
LANGUAGE sql VOLATILE STRICT PARALLEL SAFE
RETURN pg_catalog.gen_random_uuid();

-- Time-based: 100 ns intervals since 1582-10-15 (the Gregorian reform), a random 14-bit clock
-- sequence and a random node with the multicast bit set, which no network card's address has.
CREATE FUNCTION uuid_ossp_emulator_v1() RETURNS uuid
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE
SET search_path = pg_catalog
AS $fn$
DECLARE
    ts constant bigint := (extract(epoch FROM clock_timestamp()) * 10000000)::bigint + 122192928000000000;
    rnd constant bytea := uuid_send(gen_random_uuid());  -- bytes 9..15 are random
BEGIN
    RETURN encode(
        substr(int8send(ts & 4294967295), 5)                         -- time_low
        || substr(int8send((ts >> 32) & 65535), 7)                   -- time_mid
        || substr(int8send(((ts >> 48) & 4095) | 4096), 7)           -- time_hi and version 1
        || set_byte(substr(rnd, 10, 2), 0, (get_byte(rnd, 9) & 63) | 128)   -- variant, clock_seq
        || set_byte(substr(rnd, 11, 6), 0, get_byte(rnd, 10) | 1),          -- node, multicast bit
        'hex')::uuid;
END
$fn$;

CREATE FUNCTION uuid_generate_v1() RETURNS uuid
LANGUAGE sql VOLATILE STRICT PARALLEL SAFE
RETURN uuid_ossp_emulator_v1();

CREATE FUNCTION uuid_generate_v1mc() RETURNS uuid
LANGUAGE sql VOLATILE STRICT PARALLEL SAFE
RETURN uuid_ossp_emulator_v1();
