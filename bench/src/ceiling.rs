//! The ceiling: Postgres alone upserting the same 1000-row batches into a
//! students-shaped table — one prepared `INSERT … SELECT FROM unnest(…) ON
//! CONFLICT … DO UPDATE` per batch, no HTTP, no queue. A create pass inserts
//! into the emptied table; the update pass that follows changes every value.

use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use sqlx::PgPool;
use uuid::Uuid;

use crate::students;

const UPSERT: &str = "INSERT INTO bench_ceiling (id, school_id, external_reference_id,
        external_reference_type, first_name, last_name, email, phone, photo_url, file_number,
        curriculum_name, company, badge_id, tags)
    SELECT u.id, $1, u.key, 'sis', u.first_name, u.last_name, u.email, u.phone, NULL,
        u.file_number, u.curriculum_name, u.company, u.badge_id,
        ARRAY(SELECT jsonb_array_elements_text(u.tags::jsonb))
    FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
         AS u(id, key, first_name, last_name, email, phone, file_number, curriculum_name,
              company, badge_id, tags)
    ON CONFLICT (school_id, external_reference_id) DO UPDATE SET
        first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name,
        email = EXCLUDED.email, phone = EXCLUDED.phone, file_number = EXCLUDED.file_number,
        curriculum_name = EXCLUDED.curriculum_name, company = EXCLUDED.company,
        badge_id = EXCLUDED.badge_id, tags = EXCLUDED.tags, updated_at = now()";

/// (Re)creates the ceiling's table, shaped and indexed like `students`.
pub async fn prepare(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("DROP TABLE IF EXISTS bench_ceiling")
        .execute(pool)
        .await?;
    sqlx::query("CREATE TABLE bench_ceiling (LIKE students INCLUDING ALL)")
        .execute(pool)
        .await?;
    Ok(())
}

/// Drops the ceiling's table.
pub async fn drop(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("DROP TABLE IF EXISTS bench_ceiling")
        .execute(pool)
        .await?;
    Ok(())
}

/// Rows per second inserting `total` new rows into the emptied table.
pub async fn create_pass(
    pool: &PgPool,
    school_id: Uuid,
    total: usize,
    connections: usize,
) -> anyhow::Result<f64> {
    sqlx::query("TRUNCATE bench_ceiling").execute(pool).await?;
    let elapsed = run(pool, school_id, total, 0, connections, "c").await?;
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// Rows per second updating every value of the rows `create_pass` inserted.
pub async fn update_pass(
    pool: &PgPool,
    school_id: Uuid,
    total: usize,
    connections: usize,
) -> anyhow::Result<f64> {
    let elapsed = run(pool, school_id, total, 1, connections, "c").await?;
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// One pass over `total` rows on `connections` connections; the time of the
/// statements only (the columns are built before the clock starts, as the
/// end-to-end passes serialize their bodies first).
async fn run(
    pool: &PgPool,
    school_id: Uuid,
    total: usize,
    generation: u32,
    connections: usize,
    space: &str,
) -> anyhow::Result<Duration> {
    let batches: Vec<Columns> = (0..total)
        .step_by(1000)
        .map(|start| Columns::new(space, start..(start + 1000).min(total), generation))
        .collect();
    let mut lanes: Vec<Vec<Columns>> = (0..connections).map(|_| Vec::new()).collect();
    for (index, batch) in batches.into_iter().enumerate() {
        lanes[index % connections].push(batch);
    }
    let started = Instant::now();
    try_join_all(lanes.into_iter().map(|mine| async move {
        for columns in mine {
            columns.upsert(pool, school_id).await?;
        }
        anyhow::Ok(())
    }))
    .await?;
    Ok(started.elapsed())
}

/// One batch as the statement's column arrays.
struct Columns {
    ids: Vec<Uuid>,
    text: Vec<Vec<String>>,
    tags: Vec<String>,
}

/// The text columns bound after the ids, in the statement's order.
const TEXT_FIELDS: [&str; 9] = [
    "externalReferenceId",
    "firstName",
    "lastName",
    "email",
    "phone",
    "fileNumber",
    "curriculumName",
    "company",
    "badgeId",
];

impl Columns {
    fn new(space: &str, range: std::ops::Range<usize>, generation: u32) -> Self {
        let rows: Vec<serde_json::Value> = range
            .map(|i| students::student(space, i, generation))
            .collect();
        let text = TEXT_FIELDS
            .iter()
            .map(|field| {
                rows.iter()
                    .map(|row| row[*field].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .collect();
        Self {
            ids: rows.iter().map(|_| Uuid::new_v4()).collect(),
            text,
            tags: rows.iter().map(|row| row["tags"].to_string()).collect(),
        }
    }

    async fn upsert(&self, pool: &PgPool, school_id: Uuid) -> anyhow::Result<()> {
        let mut query = sqlx::query(UPSERT).bind(school_id).bind(&self.ids);
        for column in &self.text {
            query = query.bind(column);
        }
        query.bind(&self.tags).execute(pool).await?;
        Ok(())
    }
}
