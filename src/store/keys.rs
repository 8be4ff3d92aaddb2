//! Schools and their API keys. A key is 32 random bytes shown once as
//! `sk_<base64url>`; only its SHA-256 is stored, so a lookup is one unique-index
//! probe and a database leak reveals no usable key.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// Prefix of every API key (helps secret scanners recognise leaked keys).
pub const KEY_PREFIX: &str = "sk_";

/// A newly created key: the plaintext is only ever in this value.
pub struct NewApiKey {
    pub id: Uuid,
    pub plaintext: String,
}

/// Generates a fresh high-entropy key (256 bits from the OS generator).
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `presented` has the shape of a key this service issues (`sk_` and
/// 43 base64url characters). Anything else cannot be a key: it is refused
/// without asking the database.
pub fn is_well_formed(presented: &str) -> bool {
    presented.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    })
}

/// The stored form of a key.
pub fn hash_key(plaintext: &str) -> Vec<u8> {
    Sha256::digest(plaintext.as_bytes()).to_vec()
}

/// Creates a school with its first key.
pub async fn create_school(pool: &PgPool, name: &str) -> Result<(Uuid, NewApiKey), sqlx::Error> {
    let school_id = Uuid::new_v4();
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO schools (id, name) VALUES ($1, $2)")
        .bind(school_id)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let key = insert_key(&mut tx, school_id).await?;
    tx.commit().await?;
    Ok((school_id, key))
}

/// Adds a key to an existing school; `None` when the school does not exist.
pub async fn create_key(pool: &PgPool, school_id: Uuid) -> Result<Option<NewApiKey>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM schools WHERE id = $1)")
        .bind(school_id)
        .fetch_one(&mut *tx)
        .await?;
    if !exists {
        return Ok(None);
    }
    let key = insert_key(&mut tx, school_id).await?;
    tx.commit().await?;
    Ok(Some(key))
}

async fn insert_key(
    tx: &mut sqlx::PgConnection,
    school_id: Uuid,
) -> Result<NewApiKey, sqlx::Error> {
    let id = Uuid::new_v4();
    let plaintext = generate_key();
    sqlx::query("INSERT INTO api_keys (id, school_id, key_hash) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(school_id)
        .bind(hash_key(&plaintext))
        .execute(&mut *tx)
        .await?;
    Ok(NewApiKey { id, plaintext })
}

/// Revokes a key at once; `false` when there is no such (live) key.
pub async fn revoke_key(pool: &PgPool, key_id: Uuid) -> Result<bool, sqlx::Error> {
    let result =
        sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(key_id)
            .execute(pool)
            .await?;
    Ok(result.rows_affected() == 1)
}

/// The caller behind a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub school_id: Uuid,
    pub api_key_id: Uuid,
}

/// Resolves a presented key to its school; `None` for unknown or revoked keys.
///
/// The comparison is an index lookup on the SHA-256 of the key: equality of two
/// hashes leaks nothing useful about the key through timing.
pub async fn authenticate(
    pool: &PgPool,
    presented: &str,
) -> Result<Option<Principal>, sqlx::Error> {
    if !is_well_formed(presented) {
        return Ok(None);
    }
    let row: Option<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT school_id, id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash_key(presented))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(school_id, api_key_id)| Principal {
        school_id,
        api_key_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_hashed() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + 43);
        assert_eq!(hash_key(&a).len(), 32);
        assert_ne!(hash_key(&a), hash_key(&b));
        assert!(is_well_formed(&a) && is_well_formed(&b));
    }

    #[test]
    fn malformed_keys_are_recognised() {
        let key = generate_key();
        for bad in [
            String::new(),
            "sk_".to_string(),
            key[..key.len() - 1].to_string(),
            format!("{key}x"),
            key.replacen("sk_", "pk_", 1),
            format!("sk_{}", "a".repeat(42) + "="),
            format!("sk_{}", "é".repeat(21) + "a"),
        ] {
            assert!(!is_well_formed(&bad), "{bad:?}");
        }
    }
}
