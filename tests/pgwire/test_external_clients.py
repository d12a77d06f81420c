"""psql, pgJDBC and node-postgres against the running PG wire server.

They skip locally when the program is missing and fail in CI (.ci/install-pgwire.sh
installs postgresql-client, libpostgresql-jdbc-java and npm `pg`).
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests._require import in_ci, require_program
from tests.pgwire.conftest import PASSWORD

pytestmark = pytest.mark.clients

NODE_DIR = Path(__file__).parent / "node"


def _psql(pg, *commands: str) -> subprocess.CompletedProcess:
    psql = require_program("psql")
    args = [psql, "-X", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "alice", "-d", "sqlgate",
            "-v", "ON_ERROR_STOP=0"]
    for command in commands:
        args += ["-c", command]
    env = dict(os.environ, PGPASSWORD=PASSWORD, PGSSLMODE="prefer", PGCONNECT_TIMEOUT="10")
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)


def test_psql_browse_and_query(pg):
    result = _psql(pg, r"\dt", r"\d people", r"\dn", r"\d+ people", r"\du",
                   "SELECT region, COUNT(*) AS n FROM people GROUP BY region ORDER BY region",
                   "DELETE FROM people", "SELECT 1 AS still_alive")
    out = result.stdout
    assert "town   | people | table" in out
    assert 'Table "town.people"' in out
    assert "age    | bigint" in out and "not null" in out
    assert "score  | double precision" in out
    assert "Stats target" in out and "Access method: heap" in out  # \d+ renders
    assert "alice" in out                                           # \du lists the role
    for region in ("north", "south", "east", "west"):
        assert region in out
    assert "(4 rows)" in out
    assert "read-only" in result.stderr
    assert "still_alive" in out
    # The catalog never shows row counts or sizes.
    assert "reltuples" not in out


def test_psql_first_query_and_multi_statement(pg):
    result = _psql(pg, "SET sqlgate.epsilon = 0.5; SHOW sqlgate.epsilon; "
                       "SELECT COUNT(*) AS n FROM people WHERE age > 50")
    assert result.returncode == 0, result.stderr
    assert "(1 row)" in result.stdout and " n " in result.stdout


_JAVA = r"""
import java.sql.*;
import java.util.*;

public class JdbcCheck {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", "alice");
        props.setProperty("password", args[1]);
        props.setProperty("sslmode", "disable");
        try (Connection conn = DriverManager.getConnection(args[0], props)) {
            DatabaseMetaData meta = conn.getMetaData();
            StringBuilder out = new StringBuilder();
            try (ResultSet rs = meta.getTables(null, null, "%", new String[]{"TABLE"})) {
                while (rs.next()) out.append("table ").append(rs.getString("TABLE_SCHEM"))
                        .append(".").append(rs.getString("TABLE_NAME")).append("\n");
            }
            try (ResultSet rs = meta.getColumns(null, "town", "people", null)) {
                while (rs.next()) out.append("column ").append(rs.getString("COLUMN_NAME"))
                        .append(" ").append(rs.getString("TYPE_NAME")).append(" ")
                        .append(rs.getInt("DATA_TYPE")).append("\n");
            }
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT region, COUNT(*) AS n FROM people WHERE age > ? GROUP BY region")) {
                ps.setInt(1, 20);
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) out.append("count ").append(rs.getString(1)).append(" ")
                            .append(rs.getLong(2)).append("\n");
                }
            }
            try (Statement st = conn.createStatement()) {
                st.executeQuery("SELECT pid FROM people");
            } catch (SQLException e) {
                out.append("error ").append(e.getSQLState()).append("\n");
            }
            conn.setAutoCommit(false);
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT age, COUNT(*) AS n FROM people WHERE age < 30 GROUP BY age ORDER BY age")) {
                ps.setFetchSize(4);
                int rows = 0;
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) rows++;
                }
                out.append("fetched ").append(rows).append("\n");
            }
            conn.commit();
            System.out.print(out);
        }
    }
}
"""


def test_pgjdbc_metadata_prepared_and_fetch_size(pg, tmp_path):
    javac = require_program("javac")
    java = require_program("java")
    jars = sorted(glob.glob("/usr/share/java/postgresql*.jar"))
    if not jars:
        message = "pgJDBC (libpostgresql-jdbc-java) is not installed (.ci/run installs it)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    jar = next((j for j in jars if j.endswith("/postgresql.jar")), jars[0])
    (tmp_path / "JdbcCheck.java").write_text(_JAVA)
    subprocess.run([javac, "-cp", jar, "JdbcCheck.java"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=120)
    before = pg.queries()
    result = subprocess.run(
        [java, "-cp", f"{jar}:{tmp_path}", "JdbcCheck",
         f"jdbc:postgresql://127.0.0.1:{pg.port}/sqlgate", PASSWORD],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "table town.people" in lines
    assert "column age int8 -5" in lines          # BIGINT
    assert "column score float8 8" in lines       # DOUBLE
    assert "column region text 12" in lines       # VARCHAR
    assert sorted(l.split()[1] for l in lines if l.startswith("count ")) == \
        ["east", "north", "south", "west"]
    assert "error 42501" in lines
    fetched = [int(l.split()[1]) for l in lines if l.startswith("fetched ")]
    # age is not a public key set: keys pass a noisy threshold, so 'about 30' groups, paged
    # by 4 through PortalSuspended.
    assert len(fetched) == 1 and 4 < fetched[0] <= 30
    # Two DP answers (the grouped count and the paged one), each charged once.
    assert pg.queries() == before + 2


_NODE = r"""
const { Client } = require('pg');
(async () => {
  const client = new Client({ host: '127.0.0.1', port: Number(process.argv[2]), user: 'alice',
                              password: process.argv[3], database: 'sqlgate' });
  await client.connect();
  const out = {};
  const res = await client.query(
    'SELECT region, COUNT(*) AS n FROM people WHERE age > $1 GROUP BY region', [25]);
  out.regions = res.rows.map(r => r.region).sort();
  out.types = res.fields.map(f => f.dataTypeID);
  try { await client.query('INSERT INTO people VALUES (1)'); }
  catch (e) { out.error = e.code; }
  out.alive = (await client.query('SELECT 1 AS one')).rows[0].one;
  await client.end();
  console.log(JSON.stringify(out));
})().catch(e => { console.error(e); process.exit(1); });
"""


def test_node_postgres(pg, tmp_path):
    node = require_program("node")
    if not (NODE_DIR / "node_modules" / "pg").is_dir():
        message = "npm package pg is not installed in tests/pgwire/node (.ci/run installs it)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    script = tmp_path / "check.js"
    script.write_text(_NODE)
    env = dict(os.environ, NODE_PATH=str(NODE_DIR / "node_modules"))
    result = subprocess.run([node, str(script), str(pg.port), PASSWORD], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["regions"] == ["east", "north", "south", "west"]
    assert out["types"] == [25, 20]
    assert out["error"] == "25006"
    assert out["alive"] == 1
