//! Random tokens and hex encoding for credentials: session MACs, CSRF tokens,
//! ack links and codes, webhook signatures, generated passwords. One place so
//! every secret is made the same way (thread RNG, lowercase hex).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// `bytes` random bytes as lowercase hex (2 × `bytes` characters).
pub fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// `n` characters drawn uniformly from `alphabet` (for codes people type).
pub fn random_from(alphabet: &[u8], n: usize) -> String {
    (0..n)
        .map(|_| alphabet[rand::random_range(0..alphabet.len())] as char)
        .collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// HMAC-SHA256 of `data` under `key`, lowercase hex.
pub fn hmac_sha256_hex(key: &[u8], data: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    hex(&m.finalize().into_bytes())
}

/// SHA-256 of `s`, lowercase hex (how ack-link tokens are kept at rest).
pub fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_hmac_matches_rfc4231() {
        assert_eq!(unhex(&hex(&[0, 1, 0xab, 0xff])), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(random_hex(8).len(), 16);
        // RFC 4231 test case 2.
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(random_from(b"AB", 20).chars().all(|c| c == 'A' || c == 'B'));
    }
}
