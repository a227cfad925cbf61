//! Opaque random identifiers with a type prefix (`site_…`, `wrk_…`), and random secrets.

use rand::distributions::Alphanumeric;
use rand::{Rng, RngCore};

/// `prefix_` followed by 20 lowercase alphanumeric characters (~103 bits), e.g. `site_k3x…`.
pub fn new_id(prefix: &str) -> String {
    let tail: String =
        rand::thread_rng().sample_iter(&Alphanumeric).map(|b| (b as char).to_ascii_lowercase()).take(20).collect();
    format!("{prefix}_{tail}")
}

/// `n` random bytes from the OS-seeded CSPRNG, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_prefix_and_do_not_repeat() {
        let a = new_id("site");
        let b = new_id("site");
        assert!(a.starts_with("site_") && a.len() == 25);
        assert_ne!(a, b);
    }

    #[test]
    fn random_hex_has_two_digits_per_byte() {
        let s = random_hex(32);
        assert_eq!(s.len(), 64);
        assert!(s.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
