//! Who may write: the advisory lock one control plane leads by, the
//! epochs that fence a deposed leader's commits, and the channel a new
//! head is announced on.

use super::{Db, Tx};
use crate::error::{Context, Result};

/// The PostgreSQL channel a new head is announced on.
pub(crate) const HEAD_CHANNEL: &str = "setpoint_head";
/// The advisory lock whose holder is the one control plane that commits.
const LEADER_LOCK: i64 = 0x5e7_9017;

/// Held while this process leads; dropping it gives leadership up.
pub struct Leadership {
    connection: Option<sqlx::PgConnection>,
}

impl Leadership {
    /// Whether the lock is still held: its session must still be alive.
    pub async fn still_held(&mut self) -> bool {
        match &mut self.connection {
            None => true,
            Some(c) => sqlx::query("SELECT 1").execute(&mut *c).await.is_ok(),
        }
    }
}

impl Db {
    /// Leadership if no other process holds it. With SQLite there is one
    /// replica by design, so it always leads.
    pub(crate) async fn try_lead(&self) -> Result<Option<Leadership>> {
        let Db::Postgres(pool) = self else {
            return Ok(Some(Leadership { connection: None }));
        };
        let mut connection = pool.acquire().await.what("connecting for leadership")?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut *connection)
            .await
            .what("trying the leader lock")?;
        // Won: the lock lives as long as this session, kept out of the
        // pool. Lost: the connection goes back to the pool (a follower
        // tries every few hundred milliseconds; a new session each time
        // would cost PostgreSQL a backend per try).
        Ok(got.then(|| Leadership {
            connection: Some(connection.detach()),
        }))
    }

    /// A PostgreSQL listener on the head channel (`None` for SQLite).
    pub(crate) async fn head_listener(&self) -> Result<Option<sqlx::postgres::PgListener>> {
        let Db::Postgres(pool) = self else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool)
            .await
            .what("connecting the head listener")?;
        listener.listen(HEAD_CHANNEL).await.what("LISTEN")?;
        Ok(Some(listener))
    }

    pub(crate) async fn acquire_epoch(&self) -> Result<i64> {
        on_pool!(self, p => sqlx::query_scalar::<_, i64>(
            "UPDATE leader SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch"
        )
        .fetch_one(p)
        .await
        .what("acquiring an epoch"))
    }

    pub(crate) async fn leader(&self) -> Result<(i64, i64)> {
        on_pool!(self, p => sqlx::query_as::<_, (i64, i64)>("SELECT epoch, head FROM leader WHERE id = 1")
            .fetch_one(p)
            .await
            .what("reading the leader row"))
    }
}

impl Tx {
    /// The fencing step: bumps `head` if `epoch` is not older than the
    /// highest seen. `None` when refused.
    pub(crate) async fn fence(&mut self, epoch: i64) -> Result<Option<i64>> {
        let head = on_tx!(self, c => sqlx::query_scalar::<_, i64>(
            "UPDATE leader SET epoch = $1, head = head + 1
              WHERE id = 1 AND epoch <= $1 RETURNING head"
        )
        .bind(epoch)
        .fetch_optional(&mut *c)
        .await
        .what("fencing the commit"))?;
        // Followers LISTEN; the notification goes out only if this commits.
        if let (Tx::Postgres(c), Some(head)) = (&mut *self, head) {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(HEAD_CHANNEL)
                .bind(head.to_string())
                .execute(&mut **c)
                .await
                .what("notifying the new head")?;
        }
        Ok(head)
    }

    /// Takes the lock commits take (the leader row) without bumping
    /// anything, so what follows in this transaction runs between commits.
    /// Returns the head.
    pub(crate) async fn lock_head(&mut self) -> Result<i64> {
        match self {
            // BEGIN IMMEDIATE already holds the database's write lock.
            Tx::Sqlite(t) => {
                sqlx::query_scalar::<_, i64>("SELECT head FROM leader WHERE id = 1")
                    .fetch_one(&mut **t)
                    .await
            }
            Tx::Postgres(t) => {
                sqlx::query_scalar::<_, i64>("SELECT head FROM leader WHERE id = 1 FOR UPDATE")
                    .fetch_one(&mut **t)
                    .await
            }
        }
        .what("locking the leader row")
    }
}
