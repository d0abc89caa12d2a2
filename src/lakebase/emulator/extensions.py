"""The Postgres extensions Lakebase offers, made creatable in the emulator the way Lakebase lets you create them.

Written into the server's private runtime directory at each start, which ``extension_control_path``
puts ahead of the embedded Postgres's own extension directory (so they hold for every database and
every copy of the cluster):

* **gated**: extensions on Lakebase's list that the embedded Postgres ships but that stock Postgres lets
  only superusers create (pgvector's ``vector`` first). On Lakebase members of ``databricks_superuser``
  create them. Here they get a copy of their control file marked ``trusted`` (so a non-superuser with
  CREATE on the database may run the script, as the bootstrap superuser) and a copy of each script that
  first checks that the role creating the extension (its owner in ``pg_extension``) is a member of
  ``databricks_superuser``, and otherwise fails with ``permission denied to create extension "..."``,
  as stock Postgres says to anyone else. So the project owner creates them; an app's service principal
  does not, even when granted CREATE on the database, unless it is granted ``databricks_superuser``.
  Lakebase's docs list the extensions, installed with ``CREATE EXTENSION``, and make
  ``databricks_superuser`` (the owner's role) the project's administrative role; they give other roles
  nothing more, and stock Postgres lets no other non-superuser create these. The extensions stock
  Postgres itself marks trusted (pg_trgm, hstore, citext, ...) keep Postgres's rule (CREATE on the
  database): nothing in Lakebase's docs says it changes that.
  The scripts run as the bootstrap superuser, as a trusted extension's do, but PostgreSQL has not
  audited these for that (it does not mark them trusted): a ``databricks_superuser`` member who plants
  objects in the target schema might make one act for them as superuser. The emulator accepts that:
  those members administer the project anyway (on Lakebase too, short of superuser).
* **stand-ins** (in ``pg_extension/``, next to ``databricks_auth``): ``pgcrypto`` and ``uuid-ossp`` in SQL and
  PL/pgSQL, since the embedded Postgres is built without OpenSSL and a UUID library.
* **missing**: extensions Lakebase offers that the emulator cannot provide (PostGIS and its family,
  hll): a control file whose script fails with an error that names the emulator's limit, rather than
  Postgres's generic ``extension "postgis" is not available``.
"""

from __future__ import annotations

from pathlib import Path

from .files import write_private

SUPERUSER_GROUP = "databricks_superuser"

# Lakebase's list is its docs' "Postgres extensions" page (.../oltp/projects/extensions), with a column per
# Postgres major; its rows up to ltree (the PostGIS extras at 3.6.4 on 18, hll at 2.19 on 16 and 17) were
# checked there, the later ones (moddatetime ... vector, postgis) follow the issue that asked for them and
# Neon's list.

# On Lakebase's list for Postgres 18, shipped by the embedded Postgres, superuser-only in stock Postgres.
GATED = (
    "autoinc", "bloom", "earthdistance", "insert_username", "intagg", "moddatetime", "pg_prewarm",
    "pg_stat_statements", "pgrowlocks", "pgstattuple", "refint", "vector",
)

# On Lakebase's list for Postgres 18 (with the version it offers there), not buildable into the emulator.
MISSING = {
    "postgis": "3.6.4", "postgis_raster": "3.6.4", "postgis_topology": "3.6.4",
    "postgis_tiger_geocoder": "3.6.4", "postgis_sfcgal": "3.6.4",
    "address_standardizer": "3.6.4", "address_standardizer_data_us": "3.6.4", "hll": "2.19",
}

_GATE = """\
-- Added by the lakebase emulator: on Lakebase only members of {group} {verb} this extension.
DO $lakebase_gate$
BEGIN
    IF NOT pg_catalog.pg_has_role(
            (SELECT e.extowner FROM pg_catalog.pg_extension e
              WHERE e.extname OPERATOR(pg_catalog.=) '{name}'::pg_catalog.name), '{group}', 'MEMBER') THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'permission denied to {verb} extension "{name}"',
            HINT = 'On Lakebase only members of {group} {verb} this extension: ask the project owner to, '
                   'or to GRANT {group} to this role.';
    END IF;
END
$lakebase_gate$;

"""

_MISSING_SCRIPT = """\
-- Written by the lakebase emulator: Lakebase offers {name}, the emulator's embedded Postgres has no build of it.
DO $lakebase_missing$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '0A000',
        MESSAGE = 'extension "{name}" is not available in the lakebase emulator',
        DETAIL = 'Lakebase offers {name} {version}, but the emulator''s embedded Postgres has no build of it.',
        HINT = 'Test what needs {name} against a Lakebase branch; the lakebase README lists the extensions '
               'the emulator has.';
END
$lakebase_missing$;
"""


def system_extension_dir() -> Path:
    """The embedded Postgres's own extension directory (``$system`` in ``extension_control_path``)."""
    from .postgres import bin_path

    return bin_path("postgres").parent.parent / "share" / "extension"


def write_extension_files(target: Path, owner: tuple[int, int] | None, system_dir: Path | None = None) -> None:
    """Write the gated copies and the missing extensions' control files and scripts into ``target``."""
    system_dir = system_dir or system_extension_dir()
    for name in GATED:
        control = system_dir / f"{name}.control"
        if not control.exists():  # pragma: no cover - another build of the wheel
            continue
        lines = [line for line in control.read_text().splitlines() if not line.strip().startswith("trusted")]
        lines.append(f"# lakebase emulator: trusted, and its scripts check for membership in {SUPERUSER_GROUP}")
        lines.append("trusted = true")
        write_private(target / control.name, "\n".join(lines) + "\n", owner)
        for script in system_dir.glob(f"{name}--*.sql"):
            verb = "update" if script.stem.count("--") == 2 else "create"
            gate = _GATE.format(name=name, group=SUPERUSER_GROUP, verb=verb)
            write_private(target / script.name, gate + script.read_text(), owner)
    for name, version in MISSING.items():
        if (system_dir / f"{name}.control").exists():  # pragma: no cover - a build that has it: use it
            continue
        text = (f"# {name} is offered by Lakebase; the lakebase emulator cannot provide it.\n"
                f"comment = 'NOT AVAILABLE in the lakebase emulator (Lakebase offers {name} {version})'\n"
                f"default_version = '{version}'\nrelocatable = false\ntrusted = true\n")
        write_private(target / f"{name}.control", text, owner)
        write_private(target / f"{name}--{version}.sql", _MISSING_SCRIPT.format(name=name, version=version), owner)
