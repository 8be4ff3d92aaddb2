//! The ceiling: Postgres alone upserting the same 1000-row batches into a
//! students-shaped table — one prepared `INSERT … SELECT FROM unnest(…) ON
//! CONFLICT … DO UPDATE` per batch, no HTTP, no queue — at several connection
//! counts; the best figure counts.

use std::time::Instant;

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

/// Rows per second of the best connection count, for one pass (`generation` 0
/// inserts, later generations update every value).
pub async fn measure(
    pool: &PgPool,
    school_id: Uuid,
    total: usize,
    generation: u32,
    connections: &[usize],
) -> anyhow::Result<(f64, usize)> {
    sqlx::query("DROP TABLE IF EXISTS bench_ceiling")
        .execute(pool)
        .await?;
    sqlx::query("CREATE TABLE bench_ceiling (LIKE students INCLUDING ALL)")
        .execute(pool)
        .await?;
    let mut best = (0.0, 0);
    for (round, &conns) in connections.iter().enumerate() {
        // Every round starts from the same state: rows of the previous
        // generation (or none).
        sqlx::query("TRUNCATE bench_ceiling").execute(pool).await?;
        if generation > 0 {
            run(
                pool,
                school_id,
                total,
                generation - 1,
                conns,
                &format!("c{round}"),
            )
            .await?;
        }
        let started = Instant::now();
        run(
            pool,
            school_id,
            total,
            generation,
            conns,
            &format!("c{round}"),
        )
        .await?;
        let rate = total as f64 / started.elapsed().as_secs_f64();
        if rate > best.0 {
            best = (rate, conns);
        }
    }
    sqlx::query("DROP TABLE bench_ceiling")
        .execute(pool)
        .await?;
    Ok(best)
}

async fn run(
    pool: &PgPool,
    school_id: Uuid,
    total: usize,
    generation: u32,
    connections: usize,
    space: &str,
) -> anyhow::Result<()> {
    let batches: Vec<std::ops::Range<usize>> = (0..total)
        .step_by(1000)
        .map(|start| start..(start + 1000).min(total))
        .collect();
    let lanes = (0..connections).map(|lane| {
        let mine: Vec<_> = batches
            .iter()
            .skip(lane)
            .step_by(connections)
            .cloned()
            .collect();
        async move {
            for range in mine {
                upsert(pool, school_id, space, range, generation).await?;
            }
            anyhow::Ok(())
        }
    });
    try_join_all(lanes).await?;
    Ok(())
}

async fn upsert(
    pool: &PgPool,
    school_id: Uuid,
    space: &str,
    range: std::ops::Range<usize>,
    generation: u32,
) -> anyhow::Result<()> {
    let rows: Vec<serde_json::Value> = range
        .map(|i| students::student(space, i, generation))
        .collect();
    let text = |field: &str| -> Vec<String> {
        rows.iter()
            .map(|row| row[field].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let ids: Vec<Uuid> = rows.iter().map(|_| Uuid::new_v4()).collect();
    let tags: Vec<String> = rows.iter().map(|row| row["tags"].to_string()).collect();
    sqlx::query(UPSERT)
        .bind(school_id)
        .bind(&ids)
        .bind(text("externalReferenceId"))
        .bind(text("firstName"))
        .bind(text("lastName"))
        .bind(text("email"))
        .bind(text("phone"))
        .bind(text("fileNumber"))
        .bind(text("curriculumName"))
        .bind(text("company"))
        .bind(text("badgeId"))
        .bind(&tags)
        .execute(pool)
        .await?;
    Ok(())
}
