//! Rebuilds the core library when a migration is added or changed: the
//! migrations are embedded by `sqlx::migrate!`, which Cargo does not track.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
