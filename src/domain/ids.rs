//! Opaque random identifiers with a type prefix (`site_…`, `wrk_…`), time-ordered ones for rows written in bulk
//! (`msg_…`), and random secrets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::distributions::Alphanumeric;
use rand::{Rng, RngCore};

/// `prefix_` followed by 20 lowercase alphanumeric characters (~103 bits), e.g. `site_k3x…`.
pub fn new_id(prefix: &str) -> String {
    let tail: String = random_chars(20).collect();
    format!("{prefix}_{tail}")
}

/// `n` random lowercase alphanumeric characters (about 5 bits each).
fn random_chars(n: usize) -> impl Iterator<Item = char> {
    rand::thread_rng().sample_iter(&Alphanumeric).map(|b| (b as char).to_ascii_lowercase()).take(n)
}

/// Digits of the time part of [`new_ordered_id`]: 36^11 microseconds is about 4,000 years.
const ORDERED_TIME_DIGITS: usize = 11;
/// Random characters after it (about 60 bits): the time part is unique within a process; this keeps the ids of
/// instances made in the same microsecond apart.
const ORDERED_RANDOM_CHARS: usize = 12;

/// The last time part handed out by this process, in microseconds since the epoch.
static LAST_ORDERED_MICROS: AtomicU64 = AtomicU64::new(0);

/// `prefix_` followed by the time in microseconds (11 base-36 digits, fixed width) and 12 random lowercase
/// alphanumeric characters, e.g. `msg_0lz3k…`. The ids of one process sort in the order they were made (the time
/// part never repeats or goes back within a process, even when the clock does), so the rows of a bulk insert
/// (an alert's 10,000 messages) go to the end of their primary key's index instead of 10,000 random places. For
/// rows whose id is never a capability: it tells when the row was made.
pub fn new_ordered_id(prefix: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    let previous = LAST_ORDERED_MICROS
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(now.max(last + 1)))
        .unwrap_or_else(|last| last);
    let micros = now.max(previous + 1);
    let mut id = String::with_capacity(prefix.len() + 1 + ORDERED_TIME_DIGITS + ORDERED_RANDOM_CHARS);
    id.push_str(prefix);
    id.push('_');
    let mut digits = [b'0'; ORDERED_TIME_DIGITS];
    let mut rest = micros;
    for d in digits.iter_mut().rev() {
        *d = b"0123456789abcdefghijklmnopqrstuvwxyz"[(rest % 36) as usize];
        rest /= 36;
    }
    id.extend(digits.iter().map(|&b| b as char));
    id.extend(random_chars(ORDERED_RANDOM_CHARS));
    id
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
    fn ordered_ids_sort_in_the_order_they_were_made() {
        let ids: Vec<String> = (0..10_000).map(|_| new_ordered_id("msg")).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "not strictly increasing");
        assert!(ids.iter().all(|id| id.starts_with("msg_") && id.len() == 4 + 11 + 12));
        assert!(ids.iter().all(|id| id[4..].bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())));
        // The time part is the clock's, in microseconds: the first id's is within a minute of now.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        let first = u64::from_str_radix(&ids[0][4..15], 36).unwrap();
        assert!(first.abs_diff(now) < 60_000_000, "time part {first} vs clock {now}");
    }

    #[test]
    fn random_hex_has_two_digits_per_byte() {
        let s = random_hex(32);
        assert_eq!(s.len(), 64);
        assert!(s.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
