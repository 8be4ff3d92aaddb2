//! Temporary passwords: 16 characters drawn uniformly from an alphabet without
//! look-alikes (about 93 bits), from the thread-local CSPRNG (ChaCha, seeded and
//! reseeded from the operating system). Only the argon2id hash is ever stored;
//! the plaintext lives in memory until the email is handed over, then is dropped.

use argon2::{Argon2, PasswordHasher};
use rand::Rng;

/// Characters of a temporary password: no `0 O o 1 l I` to misread.
const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";
/// Length of a temporary password.
pub const LENGTH: usize = 16;

/// A fresh random temporary password.
pub fn generate() -> String {
    let mut rng = rand::rng();
    (0..LENGTH)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// The argon2id PHC string of `password` (default parameters: 19 MiB, 2
/// passes), computed off the async threads.
pub async fn hash(password: &str) -> Result<String, String> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|error| format!("hashing the temporary password failed: {error}"))
    })
    .await
    .map_err(|error| format!("the hashing task failed: {error}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHash, PasswordVerifier};
    use std::collections::HashSet;

    #[test]
    fn passwords_are_long_from_the_alphabet_and_distinct() {
        let passwords: HashSet<String> = (0..200).map(|_| generate()).collect();
        assert_eq!(passwords.len(), 200);
        for password in &passwords {
            assert_eq!(password.chars().count(), LENGTH);
            assert!(
                password.bytes().all(|b| ALPHABET.contains(&b)),
                "{password}"
            );
        }
    }

    #[tokio::test]
    async fn the_hash_verifies_the_password_and_nothing_else() {
        let password = generate();
        let stored = hash(&password).await.unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(!stored.contains(&password));
        let parsed = PasswordHash::new(&stored).unwrap();
        assert!(
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"not-the-password", &parsed)
                .is_err()
        );
    }
}
