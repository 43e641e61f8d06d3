//! Account selection: weighted rendezvous (highest-random-weight) hashing.
//!
//! Each account scores `weight / -ln(u)` where `u` is a uniform hash of the
//! key and the account label; accounts are tried best score first. With a
//! Claude Code session id as the key, a session lands on one account and
//! stays there (its provider-side prompt cache stays warm); when that
//! account is unhealthy, the next-best one takes over and keeps the session
//! for as long as the first is out, and nothing else moves. Without a key,
//! a random key spreads requests in proportion to weight.
//!
//! pingora-load-balancing's Ketama identifies backends by socket address
//! (`docs/protocol-notes.md` §7.3), and several accounts share one address,
//! so it cannot tell them apart; rendezvous hashing needs no ring and no
//! rebuild.

use std::hash::{DefaultHasher, Hash, Hasher};

/// Indices of `labels` (with their `weights`), best first for `key`.
pub fn rank(labels: &[(&str, u32)], key: u64) -> Vec<usize> {
    // One account (the common case) has nothing to rank.
    if labels.len() < 2 {
        return (0..labels.len()).collect();
    }
    let mut scored: Vec<(f64, usize)> = labels
        .iter()
        .enumerate()
        .map(|(i, (label, weight))| (score(key, label, *weight), i))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, i)| i).collect()
}

fn score(key: u64, label: &str, weight: u32) -> f64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    label.hash(&mut h);
    // 53 random bits → u in (0, 1).
    let u = ((h.finish() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight.max(1)) / -u.ln()
}

/// The balancing key of a session id.
pub fn session_key(session: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    session.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_and_weighted() {
        let accounts = [("a#1", 3), ("a#2", 1)];
        let key = session_key(b"session-1");
        let first = rank(&accounts, key)[0];
        for _ in 0..10 {
            assert_eq!(rank(&accounts, key)[0], first, "same session, same account");
        }
        let mut wins = [0usize; 2];
        for i in 0..4000u64 {
            wins[rank(&accounts, session_key(&i.to_le_bytes()))[0]] += 1;
        }
        let share = wins[0] as f64 / 4000.0;
        assert!((0.70..0.80).contains(&share), "weight 3:1 gives ~75%: {share}");
    }

    #[test]
    fn removing_an_account_moves_only_its_sessions() {
        let three = [("x", 1), ("y", 1), ("z", 1)];
        let two = [("x", 1), ("y", 1)];
        for i in 0..500u64 {
            let k = session_key(&i.to_le_bytes());
            let before = three[rank(&three, k)[0]].0;
            if before != "z" {
                assert_eq!(two[rank(&two, k)[0]].0, before);
            }
        }
    }
}
