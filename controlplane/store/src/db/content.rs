//! The content-addressed tables: `fragments`, `manifests`, `chunks`,
//! written once (`ON CONFLICT DO NOTHING`) and read by key.

use setpoint_dataplane::Digest;
use sqlx::Sqlite;
use sqlx::sqlite::SqlitePool;

use super::{Db, PG_BATCH, Tx, digest_of, to_i64, to_u64};
use crate::chunk::{Chunk, FragmentHeader, Manifest};
use crate::error::{Context, Result, StoreError};

/// The store's view of an `fragments` row.
pub(crate) struct FragmentRow {
    pub key: Digest,
    pub header: FragmentHeader,
}

/// Keys per `IN (…)` list on SQLite (well under its variable limit).
const SQLITE_IN_BATCH: usize = 500;

/// Rows of `select` (ending in `IN (`) for `keys`, in batches.
async fn sqlite_in<T>(
    pool: &SqlitePool,
    select: &'static str,
    keys: &[Digest],
) -> std::result::Result<Vec<T>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
{
    let mut out = Vec::with_capacity(keys.len());
    for batch in keys.chunks(SQLITE_IN_BATCH) {
        let mut q = sqlx::QueryBuilder::<Sqlite>::new(select);
        let mut list = q.separated(", ");
        for k in batch {
            list.push_bind(k.0.to_vec());
        }
        q.push(")");
        out.extend(q.build_query_as::<T>().fetch_all(pool).await?);
    }
    Ok(out)
}

impl Db {
    pub(crate) async fn fragments(&self, keys: &[Digest]) -> Result<Vec<FragmentRow>> {
        type Raw = (Vec<u8>, Vec<u8>, i64, Vec<u8>, i64);
        let raw: Vec<Raw> = match self {
            Db::Postgres(p) => sqlx::query_as::<_, Raw>(
                "SELECT digest, root, height::bigint, state_digest, atoms FROM fragments
                  WHERE digest = ANY($1)",
            )
            .bind(keys.iter().map(|k| k.0.to_vec()).collect::<Vec<_>>())
            .fetch_all(p)
            .await
            .what("reading fragments")?,
            Db::Sqlite(p) => sqlite_in(
                p,
                "SELECT digest, root, height, state_digest, atoms FROM fragments WHERE digest IN (",
                keys,
            )
            .await
            .what("reading fragments")?,
        };
        raw.into_iter()
            .map(|(key, root, height, state_digest, atoms)| {
                Ok(FragmentRow {
                    key: digest_of(&key, "fragments", "digest")?,
                    header: FragmentHeader {
                        root: digest_of(&root, "fragments", "root")?,
                        height: u8::try_from(height).map_err(|_| StoreError::BadRow {
                            table: "fragments",
                            reason: format!("height {height}"),
                        })?,
                        digest: digest_of(&state_digest, "fragments", "state_digest")?,
                        atoms: to_u64(atoms, "fragments", "atoms")?,
                    },
                })
            })
            .collect()
    }

    /// (key, level, body) of the manifests asked for that exist.
    pub(crate) async fn manifests(&self, keys: &[Digest]) -> Result<Vec<(Digest, i64, Vec<u8>)>> {
        type Raw = (Vec<u8>, i64, Vec<u8>);
        let raw: Vec<Raw> = match self {
            Db::Postgres(p) => sqlx::query_as::<_, Raw>(
                "SELECT digest, level::bigint, body FROM manifests WHERE digest = ANY($1)",
            )
            .bind(keys.iter().map(|k| k.0.to_vec()).collect::<Vec<_>>())
            .fetch_all(p)
            .await
            .what("reading manifests")?,
            Db::Sqlite(p) => sqlite_in(
                p,
                "SELECT digest, level, body FROM manifests WHERE digest IN (",
                keys,
            )
            .await
            .what("reading manifests")?,
        };
        raw.into_iter()
            .map(|(k, level, body)| Ok((digest_of(&k, "manifests", "digest")?, level, body)))
            .collect()
    }

    /// (key, body) of the chunks asked for that exist.
    pub(crate) async fn chunks(&self, keys: &[Digest]) -> Result<Vec<(Digest, Vec<u8>)>> {
        type Raw = (Vec<u8>, Vec<u8>);
        let raw: Vec<Raw> = match self {
            Db::Postgres(p) => {
                sqlx::query_as::<_, Raw>("SELECT digest, body FROM chunks WHERE digest = ANY($1)")
                    .bind(keys.iter().map(|k| k.0.to_vec()).collect::<Vec<_>>())
                    .fetch_all(p)
                    .await
                    .what("reading chunks")?
            }
            Db::Sqlite(p) => {
                sqlite_in(p, "SELECT digest, body FROM chunks WHERE digest IN (", keys)
                    .await
                    .what("reading chunks")?
            }
        };
        raw.into_iter()
            .map(|(k, body)| Ok((digest_of(&k, "chunks", "digest")?, body)))
            .collect()
    }
}

impl Tx {
    pub(crate) async fn insert_chunks(&mut self, chunks: &[&Chunk]) -> Result<()> {
        match self {
            Tx::Postgres(t) => {
                for batch in chunks.chunks(PG_BATCH) {
                    let keys: Vec<&[u8]> = batch.iter().map(|c| &c.key.0[..]).collect();
                    let atoms: Vec<i32> = batch
                        .iter()
                        .map(|c| i32::try_from(c.atoms).unwrap_or(i32::MAX))
                        .collect();
                    let bodies: Vec<&[u8]> = batch.iter().map(|c| c.body.as_slice()).collect();
                    sqlx::query(
                        "INSERT INTO chunks (digest, atoms, body)
                         SELECT * FROM UNNEST($1::bytea[], $2::int4[], $3::bytea[])
                         ON CONFLICT (digest) DO NOTHING",
                    )
                    .bind(keys)
                    .bind(atoms)
                    .bind(bodies)
                    .execute(&mut **t)
                    .await
                    .what("writing chunks")?;
                }
            }
            Tx::Sqlite(t) => {
                for c in chunks {
                    sqlx::query(
                        "INSERT INTO chunks (digest, atoms, body) VALUES ($1, $2, $3)
                         ON CONFLICT (digest) DO NOTHING",
                    )
                    .bind(&c.key.0[..])
                    .bind(i64::from(c.atoms))
                    .bind(c.body.as_slice())
                    .execute(&mut **t)
                    .await
                    .what("writing chunks")?;
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn insert_manifests(&mut self, manifests: &[&Manifest]) -> Result<()> {
        match self {
            Tx::Postgres(t) => {
                for batch in manifests.chunks(PG_BATCH) {
                    let keys: Vec<&[u8]> = batch.iter().map(|m| &m.key.0[..]).collect();
                    let levels: Vec<i16> = batch.iter().map(|m| i16::from(m.level)).collect();
                    let bodies: Vec<&[u8]> = batch.iter().map(|m| m.body.as_slice()).collect();
                    sqlx::query(
                        "INSERT INTO manifests (digest, level, body)
                         SELECT * FROM UNNEST($1::bytea[], $2::int2[], $3::bytea[])
                         ON CONFLICT (digest) DO NOTHING",
                    )
                    .bind(keys)
                    .bind(levels)
                    .bind(bodies)
                    .execute(&mut **t)
                    .await
                    .what("writing manifests")?;
                }
            }
            Tx::Sqlite(t) => {
                for m in manifests {
                    sqlx::query(
                        "INSERT INTO manifests (digest, level, body) VALUES ($1, $2, $3)
                         ON CONFLICT (digest) DO NOTHING",
                    )
                    .bind(&m.key.0[..])
                    .bind(i64::from(m.level))
                    .bind(m.body.as_slice())
                    .execute(&mut **t)
                    .await
                    .what("writing manifests")?;
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn insert_fragments(
        &mut self,
        fragments: &[(Digest, FragmentHeader)],
    ) -> Result<()> {
        let atoms = |h: &FragmentHeader| to_i64(h.atoms, "atom count");
        match self {
            Tx::Postgres(t) => {
                for batch in fragments.chunks(PG_BATCH) {
                    let keys: Vec<&[u8]> = batch.iter().map(|(k, _)| &k.0[..]).collect();
                    let roots: Vec<&[u8]> = batch.iter().map(|(_, h)| &h.root.0[..]).collect();
                    let heights: Vec<i16> =
                        batch.iter().map(|(_, h)| i16::from(h.height)).collect();
                    let digests: Vec<&[u8]> = batch.iter().map(|(_, h)| &h.digest.0[..]).collect();
                    let counts = batch
                        .iter()
                        .map(|(_, h)| atoms(h))
                        .collect::<Result<Vec<i64>>>()?;
                    sqlx::query(
                        "INSERT INTO fragments (digest, root, height, state_digest, atoms)
                         SELECT * FROM UNNEST($1::bytea[], $2::bytea[], $3::int2[], $4::bytea[], $5::int8[])
                         ON CONFLICT (digest) DO NOTHING",
                    )
                    .bind(keys)
                    .bind(roots)
                    .bind(heights)
                    .bind(digests)
                    .bind(counts)
                    .execute(&mut **t)
                    .await
                    .what("writing fragments")?;
                }
            }
            Tx::Sqlite(t) => {
                for (k, h) in fragments {
                    sqlx::query(
                        "INSERT INTO fragments (digest, root, height, state_digest, atoms)
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (digest) DO NOTHING",
                    )
                    .bind(&k.0[..])
                    .bind(&h.root.0[..])
                    .bind(i64::from(h.height))
                    .bind(&h.digest.0[..])
                    .bind(atoms(h)?)
                    .execute(&mut **t)
                    .await
                    .what("writing fragments")?;
                }
            }
        }
        Ok(())
    }
}
