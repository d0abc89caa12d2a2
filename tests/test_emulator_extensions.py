"""The extensions Lakebase offers, in the emulator, through the proxy: created as Lakebase lets you create
them (members of databricks_superuser; an app's service principal only when granted), in the default
database and in new ones; the pgcrypto and uuid-ossp stand-ins against known answers (RFC and NIST
vectors, Python's hashlib/hmac/uuid, the bcrypt library's and OpenSSL's hashes); PostGIS refused with
an error that names the emulator's limit; the project's pg_version."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

import lakebase

from .conftest import owner_connect
from .lakebase_support import m2m_client, pat_client

Emulator = Any

# On Lakebase's list and superuser-only in stock Postgres: Lakebase lets databricks_superuser create them.
GATED = ("vector", "autoinc", "bloom", "earthdistance", "insert_username", "intagg", "moddatetime", "pg_prewarm",
         "pg_stat_statements", "pgrowlocks", "pgstattuple", "refint")
# What apps' migrations create first, and those; pgcrypto and uuid-ossp are stand-ins.
LAKEBASE_EXTENSIONS = ("pg_trgm", "hstore", "citext", "ltree", "btree_gist", "pgcrypto", '"uuid-ossp"',
                       "unaccent", *GATED)


@pytest.fixture
def new_database(emulator: Emulator) -> Iterator[Callable[[], str]]:
    """Databases the project owner creates through the proxy (as an app's setup would), dropped after."""
    made: list[str] = []

    def make() -> str:
        name = "ext_" + uuid.uuid4().hex[:8]
        with owner_connect(emulator, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        made.append(name)
        return name

    yield make
    with owner_connect(emulator, autocommit=True) as conn:
        for name in made:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def crypto(emulator: Emulator) -> Iterator[psycopg.Connection[Any]]:
    """The owner's session in the default database with pgcrypto and uuid-ossp created in a transaction
    that is rolled back at the end (nothing is left for other tests)."""
    with owner_connect(emulator) as conn:
        conn.execute("CREATE EXTENSION pgcrypto")
        conn.execute('CREATE EXTENSION "uuid-ossp"')
        conn.execute("SAVEPOINT ready")
        yield conn
        conn.rollback()


def one(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def fails(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> psycopg.Error:
    """The error ``sql`` raises; the crypto session goes on after it."""
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    conn.execute("ROLLBACK TO SAVEPOINT ready")
    return info.value


# ---- who may create them ---------------------------------------------------------------------------
def test_the_owner_creates_lakebase_extensions_in_a_new_database(emulator: Emulator,
                                                                 new_database: Callable[[], str]) -> None:
    dbname = new_database()
    with owner_connect(emulator, dbname=dbname, autocommit=True) as conn:
        for name in LAKEBASE_EXTENSIONS:
            conn.execute(f"CREATE EXTENSION IF NOT EXISTS {name} CASCADE")
        owners = dict(conn.execute("SELECT extname, pg_get_userbyid(extowner) FROM pg_extension").fetchall())
        assert owners["vector"] == emulator.owner.name and owners["cube"] == emulator.owner.name  # CASCADE
        # pgvector works: an HNSW index and a nearest-neighbour query.
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, embedding vector(3))")
        conn.execute("CREATE INDEX ON items USING hnsw (embedding vector_l2_ops)")
        conn.execute("INSERT INTO items VALUES (1, '[1,2,3]'), (2, '[9,9,9]')")
        assert one(conn, "SELECT id FROM items ORDER BY embedding <-> '[1,2,4]' LIMIT 1") == 1
        assert one(conn, "SELECT similarity('lakebase', 'lakebases')") > 0.5  # pg_trgm
        assert one(conn, "SELECT count(*) >= 0 FROM pg_stat_statements")  # preloaded, as on Lakebase
        assert 111_000 < one(conn, "SELECT earth_distance(ll_to_earth(0, 0), ll_to_earth(0, 1))") < 111_500
        assert one(conn, "SELECT uuid_generate_v5(uuid_ns_url(), 'x') = %s::uuid",
                   (str(uuid.uuid5(uuid.NAMESPACE_URL, "x")),))
        # Not on Lakebase's list: still superuser-only.
        with pytest.raises(errors.InsufficientPrivilege, match='permission denied to create extension "file_fdw"'):
            conn.execute("CREATE EXTENSION file_fdw")


def test_the_owner_creates_them_in_the_default_database(emulator: Emulator) -> None:
    with owner_connect(emulator) as conn:  # in a transaction, rolled back: nothing stays for other tests
        for name in LAKEBASE_EXTENSIONS:
            conn.execute(f"CREATE EXTENSION IF NOT EXISTS {name} CASCADE")
        assert one(conn, "SELECT '[3,4]'::vector <-> '[0,0]'") == 5
        conn.rollback()


def test_an_apps_service_principal_is_refused_unless_granted(emulator: Emulator, app_env: dict[str, str],
                                                             new_database: Callable[[], str]) -> None:
    app = emulator.app.name
    dbname = new_database()
    with owner_connect(emulator, dbname=dbname, autocommit=True) as owner:
        owner.execute(f'GRANT CONNECT ON DATABASE {dbname} TO "{app}"')
        with lakebase.connect(database=dbname, autocommit=True) as conn:
            # Without CREATE on the database: Postgres's own rule, for every extension.
            for name in ("vector", "pg_trgm", "pgcrypto"):
                with pytest.raises(errors.InsufficientPrivilege, match="permission denied to create extension"):
                    conn.execute(f"CREATE EXTENSION {name}")
            owner.execute(f'GRANT CREATE ON DATABASE {dbname} TO "{app}"')
            # With it: what Postgres marks trusted, as on Lakebase; not what Lakebase keeps for
            # databricks_superuser.
            conn.execute("CREATE EXTENSION pg_trgm")
            conn.execute("CREATE EXTENSION pgcrypto")
            for name in GATED:
                with pytest.raises(errors.InsufficientPrivilege) as info:
                    conn.execute(f"CREATE EXTENSION {name} CASCADE")
                assert info.value.diag.message_primary == f'permission denied to create extension "{name}"'
                assert "databricks_superuser" in (info.value.diag.message_hint or "")
            assert conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'").fetchone() is None

        # Granted databricks_superuser (a service principal of its own, not the shared app's role).
        sp = emulator.add_service_principal(f"ext-{uuid.uuid4().hex[:6]}")
        owner.execute("CREATE EXTENSION IF NOT EXISTS databricks_auth")
        owner.execute("SELECT databricks_create_role(%s, 'service_principal')", (sp.name,))
        owner.execute(f'GRANT databricks_superuser TO "{sp.name}"')
        owner.execute(f'GRANT CONNECT, CREATE ON DATABASE {dbname} TO "{sp.name}"')
        with lakebase.connect(workspace_client=m2m_client(emulator, sp.name, sp.client_secret), user=sp.name,
                              host="localhost", port=emulator.pg_port, endpoint=emulator.endpoint_name,
                              database=dbname, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION vector")
            assert one(conn, "SELECT pg_get_userbyid(extowner) FROM pg_extension WHERE extname = 'vector'") == sp.name
        owner.execute(f'REVOKE databricks_superuser FROM "{sp.name}"')


def test_extensions_the_emulator_lacks_name_its_limit(emulator: Emulator) -> None:
    with owner_connect(emulator, autocommit=True) as conn:
        for name in ("postgis", "postgis_topology", "address_standardizer", "hll"):
            with pytest.raises(errors.FeatureNotSupported) as info:
                conn.execute(f"CREATE EXTENSION {name}")
            assert info.value.diag.message_primary == (
                f'extension "{name}" is not available in the lakebase emulator')
            assert "Lakebase offers" in (info.value.diag.message_detail or "")
        assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'postgis'").fetchone() is None


def test_the_project_reports_the_postgres_major_it_runs(emulator: Emulator) -> None:
    with owner_connect(emulator) as conn:
        major = int(one(conn, "SHOW server_version_num")) // 10000
    project = pat_client(emulator).postgres.get_project("/".join(emulator.endpoint_name.split("/")[:2]))
    assert major == 18
    assert project.status is not None and project.status.pg_version == major
    assert project.spec is not None and project.spec.pg_version == major


# ---- pgcrypto: known answers ---------------------------------------------------------------------
DIGESTS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")
MESSAGES = (b"", b"abc", "snowman \u2603 \u00fc".encode(), b"a" * 55, b"a" * 56, b"a" * 64, b"a" * 111,
            b"a" * 112, bytes(range(256)) * 4)


def test_digest_matches_nist_vectors_and_hashlib(crypto: psycopg.Connection[Any]) -> None:
    # FIPS 180 examples
    assert one(crypto, "SELECT encode(digest('abc', 'sha1'), 'hex')") == "a9993e364706816aba3e25717850c26c9cd0d89d"
    assert one(crypto, "SELECT encode(digest('abc', 'SHA256'), 'hex')") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    for alg in DIGESTS:
        for msg in MESSAGES:
            assert one(crypto, "SELECT digest(%s::bytea, %s)", (msg, alg)) == hashlib.new(alg, msg).digest(), (alg, msg)
        text = "snowman \u2603"
        assert one(crypto, "SELECT digest(%s::text, %s)", (text, alg)) == hashlib.new(alg, text.encode()).digest()
    err = fails(crypto, "SELECT digest('x', 'sha3')")
    assert err.sqlstate == "39000" and 'Cannot use "sha3": No such hash algorithm' in str(err)


def test_hmac_matches_rfc_vectors_and_python(crypto: psycopg.Connection[Any]) -> None:
    jefe = "SELECT encode(hmac('what do ya want for nothing?', 'Jefe', %s), 'hex')"
    assert one(crypto, jefe, ("sha1",)) == "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"  # RFC 2202 2
    assert one(crypto, jefe, ("md5",)) == "750c783e6ab0b503eaa86e310a5db738"  # RFC 2202 2
    assert one(crypto, jefe, ("sha256",)) == (  # RFC 4231 2
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    for alg in DIGESTS:
        for key in (b"", b"k" * 20, b"k" * 64, b"k" * 65, bytes(range(131))):  # 131 > both block sizes
            for msg in (b"", b"Hi There", b"m" * 200):
                want = hmac.new(key, msg, alg).digest()
                assert one(crypto, "SELECT hmac(%s::bytea, %s::bytea, %s)", (msg, key, alg)) == want, (alg, key, msg)


def test_random_bytes_and_uuid(crypto: psycopg.Connection[Any]) -> None:
    assert [len(one(crypto, "SELECT gen_random_bytes(%s)", (n,))) for n in (1, 15, 16, 1024)] == [1, 15, 16, 1024]
    assert len({one(crypto, "SELECT gen_random_bytes(16)") for _ in range(20)}) == 20
    for bad in (0, 1025):
        assert "Length not in range" in str(fails(crypto, "SELECT gen_random_bytes(%s)", (bad,)))
    assert one(crypto, "SELECT gen_random_uuid()").version == 4


BCRYPT = [  # (password, setting, hash): the bcrypt library's hashes, made $2b$ and shown with pgcrypto's $2a$
    # (the same hash for passwords without 0xff bytes), and Openwall's crypt_blowfish test vector
    ("", "$2a$04$abcdefghijklmnopqrstuu", "$2a$04$abcdefghijklmnopqrstuubyCG3zY1GIXMyxfivm.ClDiInHzxjiq"),
    ("p\u00e4ssw\u00f6rd \u2603", "$2a$04$0123456789./ABCDEFGHIO",
     "$2a$04$0123456789./ABCDEFGHIOW4/lF9tiB2qmonc73Ee/1SnDSpMXTLu"),
    # Only the first 72 bytes count: this is the hash of "x" * 72.
    ("x" * 100, "$2a$04$zzzzzzzzzzzzzzzzzzzzzu", "$2a$04$zzzzzzzzzzzzzzzzzzzzzugCNRp6Z/OS/mcJwGjM4wiaD5RxpLHsK"),
    # The setting may be a whole stored hash: how apps check a password.
    ("U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
     "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"),
]
MD5_CRYPT = [  # `openssl passwd -1 -salt SALT PASSWORD`
    ("password", "$1$saltsalt$", "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/"),
    ("", "$1$ab$", "$1$ab$rn6aQS/o7141mj179E/zA."),
    ("\u00dcber long password with \u00fcn\u00efcode and more than sixteen bytes", "$1$xy.z/Q9$",
     "$1$xy.z/Q9$MfcK5Kqgo.E/8lWQaw2ff1"),
]


def test_crypt_bcrypt_and_md5_known_hashes(crypto: psycopg.Connection[Any]) -> None:
    for password, setting, want in BCRYPT + MD5_CRYPT:
        assert one(crypto, "SELECT crypt(%s, %s)", (password, setting)) == want, (password, setting)
    assert one(crypto, "SELECT crypt(%s, %s)", MD5_CRYPT[0][::2]) == MD5_CRYPT[0][2]  # a stored md5 hash
    assert one(crypto, "SELECT crypt('wrong', %s)", (MD5_CRYPT[0][2],)) != MD5_CRYPT[0][2]
    # pgcrypto knows no $2b$/$2y$ (it would return a DES hash that never matches): said, not imitated.
    err = fails(crypto, "SELECT crypt('x', '$2b$04$abcdefghijklmnopqrstuubyCG3zY1GIXMyxfivm.ClDiInHzxjiq')")
    assert isinstance(err, errors.FeatureNotSupported) and "does not take $2b$" in str(err)
    assert "$2a$" in (err.diag.message_hint or "")


def test_gen_salt_makes_salts_crypt_takes(crypto: psycopg.Connection[Any]) -> None:
    assert re.fullmatch(r"\$2a\$06\$[./A-Za-z0-9]{22}", one(crypto, "SELECT gen_salt('bf')"))
    assert re.fullmatch(r"\$1\$[./A-Za-z0-9]{8}", one(crypto, "SELECT gen_salt('md5')"))
    stored = one(crypto, "SELECT crypt('s3cret', gen_salt('bf', 4))")
    assert re.fullmatch(r"\$2a\$04\$[./A-Za-z0-9]{53}", stored)
    assert one(crypto, "SELECT crypt('s3cret', %s) = %s", (stored, stored))
    stored = one(crypto, "SELECT crypt('s3cret', gen_salt('md5'))")
    assert one(crypto, "SELECT crypt('s3cret', %s) = %s AND crypt('s3cret!', %s) <> %s", (stored,) * 4)
    assert "Incorrect number of rounds" in str(fails(crypto, "SELECT gen_salt('bf', 3)"))
    assert "Unknown salt algorithm" in str(fails(crypto, "SELECT gen_salt('nope')"))


@pytest.mark.parametrize("sql", [
    "SELECT encrypt('data', 'key', 'aes')", "SELECT decrypt('data', 'key', 'aes')",
    "SELECT pgp_sym_encrypt('data', 'key')", "SELECT pgp_sym_decrypt('\\x00', 'key')", "SELECT armor('\\x00')",
    "SELECT crypt('pw', 'ab')", "SELECT crypt('pw', '$6$salt')", "SELECT gen_salt('des')",
    "SELECT * FROM pgp_armor_headers('x')",
])
def test_what_the_stand_in_lacks_names_the_emulator_limit(crypto: psycopg.Connection[Any], sql: str) -> None:
    err = fails(crypto, sql)
    assert isinstance(err, errors.FeatureNotSupported)
    assert "is not available in the lakebase emulator" in (err.diag.message_primary or "")
    assert "Lakebase" in (err.diag.message_hint or "")


# ---- uuid-ossp: known answers --------------------------------------------------------------------
def test_uuid_ossp_matches_rfc_4122_and_python(crypto: psycopg.Connection[Any]) -> None:
    namespaces = {"dns": uuid.NAMESPACE_DNS, "url": uuid.NAMESPACE_URL, "oid": uuid.NAMESPACE_OID,
                  "x500": uuid.NAMESPACE_X500}
    for short, ns in namespaces.items():
        assert one(crypto, f"SELECT uuid_ns_{short}()") == ns
        for name in ("python.org", "", "https://www.databricks.com/", "cn=J\u00fcrgen,o=\u2603", "n" * 300):
            assert one(crypto, f"SELECT uuid_generate_v3(uuid_ns_{short}(), %s)", (name,)) == uuid.uuid3(ns, name)
            assert one(crypto, f"SELECT uuid_generate_v5(uuid_ns_{short}(), %s)", (name,)) == uuid.uuid5(ns, name)
    # RFC 4122 appendix B (errata 1352): the v3 UUID of www.widgets.com in the DNS namespace
    assert str(one(crypto, "SELECT uuid_generate_v3(uuid_ns_dns(), 'www.widgets.com')")) == (
        "3d813cbb-47fb-32ba-91df-831e1593ac29")
    assert one(crypto, "SELECT uuid_nil()") == uuid.UUID(int=0)
    assert one(crypto, "SELECT uuid_generate_v4()").version == 4
    now = one(crypto, "SELECT now()")
    v1s = [one(crypto, f"SELECT uuid_generate_{fn}()") for fn in ("v1", "v1", "v1mc", "v1mc")]
    assert len(set(v1s)) == 4
    for u in v1s:
        assert u.version == 1 and u.variant == uuid.RFC_4122 and u.node & (1 << 40)  # multicast: not a MAC
        made = dt.datetime(1582, 10, 15, tzinfo=dt.UTC) + dt.timedelta(microseconds=u.time // 10)
        assert abs(made - now) < dt.timedelta(hours=1)


def test_on_a_branch_as_on_the_main_branch(emulator: Emulator, user_env: dict[str, str], app_role: str,
                                           monkeypatch: pytest.MonkeyPatch, fresh_registries: None) -> None:
    """A branch is a copy of the cluster: the owner creates the gated extensions and the stand-ins there
    too, and the app's service principal is refused as on the main branch."""
    from databricks.sdk.service.postgres import Branch, BranchSpec

    w = pat_client(emulator)
    project = emulator.endpoint_name.split("/branches/", 1)[0]
    branch = w.postgres.create_branch(parent=project, branch=Branch(spec=BranchSpec(no_expiry=True)),
                                      branch_id="ext-" + uuid.uuid4().hex[:8]).wait()
    try:
        monkeypatch.delenv("PGHOST")
        monkeypatch.setenv("ENDPOINT_NAME", f"{branch.name}/endpoints/primary")
        with lakebase.connect() as conn:  # as the owner, in a transaction rolled back
            for name in ("vector", "pgcrypto", '"uuid-ossp"'):
                conn.execute(f"CREATE EXTENSION {name}")
            assert one(conn, "SELECT encode(digest('abc', 'sha256'), 'hex')") == hashlib.sha256(b"abc").hexdigest()
            assert one(conn, "SELECT uuid_generate_v5(uuid_ns_dns(), 'python.org')::text") == str(
                uuid.uuid5(uuid.NAMESPACE_DNS, "python.org"))
            assert one(conn, "SELECT '[1,2]'::vector <-> '[1,3]'::vector") == 1.0
            conn.rollback()
        for key, value in emulator.app_env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("DATABRICKS_TOKEN", raising=False)
        monkeypatch.delenv("PGHOST", raising=False)
        monkeypatch.setenv("ENDPOINT_NAME", f"{branch.name}/endpoints/primary")
        with lakebase.connect(autocommit=True) as conn:  # the app's role and grants came with the copy
            with pytest.raises(errors.InsufficientPrivilege, match='permission denied to create extension "vector"'):
                conn.execute("CREATE EXTENSION vector")
    finally:
        w.postgres.delete_branch(branch.name).wait()
