//! Schema migrations, embedded in the binary (planner/migrations/{sqlite,mysql}/NNNN_name.sql) and
//! applied in order at open. Applied versions are kept in `latplan_schema`. Every statement is
//! written to be re-runnable (`IF NOT EXISTS`) because MySQL cannot roll back DDL: a migration cut
//! short by a crash is simply applied again.
use super::{Backend, Result, Store, StoreError, now_unix_ms, on_pool};

struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    mysql: &'static str,
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "init",
    sqlite: include_str!("../../migrations/sqlite/0001_init.sql"),
    mysql: include_str!("../../migrations/mysql/0001_init.sql"),
}];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = 1;

pub(super) async fn run(store: &Store) -> Result<()> {
    let create = "CREATE TABLE IF NOT EXISTS latplan_schema (version BIGINT NOT NULL PRIMARY KEY, \
                  name VARCHAR(255) NOT NULL, applied_unix_ms BIGINT NOT NULL)";
    on_pool!(store, p => sqlx::query(create).execute(p).await.map(|_| ())).map_err(|source| {
        StoreError::Migrate {
            version: 0,
            name: "latplan_schema",
            source,
        }
    })?;
    let applied: Vec<i64> = on_pool!(store, p => sqlx::query_scalar("SELECT version FROM latplan_schema").fetch_all(p).await)
        .map_err(|source| StoreError::Migrate { version: 0, name: "latplan_schema", source })?;
    if let Some(newer) = applied.iter().find(|v| **v > SCHEMA_VERSION) {
        return Err(StoreError::Invalid(format!(
            "the store has schema version {newer}, newer than this latplan ({SCHEMA_VERSION}); upgrade latplan"
        )));
    }
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        let sql = match store.backend() {
            Backend::Sqlite => m.sqlite,
            Backend::MySql => m.mysql,
        };
        let err = |source| StoreError::Migrate {
            version: m.version,
            name: m.name,
            source,
        };
        for stmt in statements(sql) {
            on_pool!(store, p => sqlx::query(sqlx::AssertSqlSafe(stmt)).execute(p).await.map(|_| ())).map_err(err)?;
        }
        let record = format!(
            "{} INTO latplan_schema (version, name, applied_unix_ms) VALUES (?, ?, ?)",
            store.insert_ignore()
        );
        on_pool!(store, p => sqlx::query(sqlx::AssertSqlSafe(record)).bind(m.version).bind(m.name).bind(now_unix_ms()).execute(p).await.map(|_| ()))
            .map_err(err)?;
    }
    Ok(())
}

/// Splits a migration file into statements: `;` at the end of a line ends one; `--` lines are comments.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in sql.lines() {
        let t = line.trim();
        if t.starts_with("--") || t.is_empty() {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if t.ends_with(';') {
            out.push(cur.trim().trim_end_matches(';').to_string());
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_dialects_define_the_same_tables() {
        let tables = |sql: &str| {
            statements(sql)
                .iter()
                .filter_map(|s| {
                    s.strip_prefix("CREATE TABLE IF NOT EXISTS ")
                        .map(|r| r.split_whitespace().next().unwrap().to_string())
                })
                .collect::<Vec<_>>()
        };
        for m in MIGRATIONS {
            assert_eq!(tables(m.sqlite), tables(m.mysql), "migration {}", m.version);
            assert!(tables(m.sqlite).contains(&"samples".to_string()));
        }
    }
}
