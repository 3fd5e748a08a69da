//! Which endpoint takes a request, and which endpoints are left out for a
//! while because they fail. Pure: the proxy passes in what it counts (the
//! requests in flight to each endpoint), the random draws and the time.
//!
//! - **Power of two choices**: two endpoints drawn at random, the one with
//!   fewer requests in flight wins. Nearly as good as the least loaded of
//!   all, with no global scan and no herd on one idle endpoint.
//! - **ClientIP affinity**: rendezvous hashing of the client's address over
//!   the endpoints: a client keeps its endpoint while that one stays, and
//!   when one goes only its clients move.
//! - **Outlier ejection**: an endpoint that cannot be reached is left out
//!   at once, one that answers with server errors after several in a row;
//!   it is let back after a while, and one more failure sends it out for
//!   longer (up to a limit).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// An endpoint as [`pick`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Identifies the endpoint for hashing (its pod's uid).
    pub key: &'a str,
    pub in_flight: usize,
    /// Left out by [`Outliers`], or already tried for this request.
    pub excluded: bool,
}

/// The index of the endpoint to use, or None when there is none.
/// `draws` are two random numbers. When every endpoint is excluded the
/// choice is made among all of them: an endpoint that may be failing is
/// better than none.
pub fn pick(cands: &[Candidate<'_>], client: Option<IpAddr>, draws: (u64, u64)) -> Option<usize> {
    let usable: Vec<usize> = (0..cands.len()).filter(|&i| !cands[i].excluded).collect();
    let pool: Vec<usize> = if usable.is_empty() {
        (0..cands.len()).collect()
    } else {
        usable
    };
    match (pool.len(), client) {
        (0, _) => None,
        (1, _) => Some(pool[0]),
        (_, Some(ip)) => pool
            .iter()
            .copied()
            .max_by_key(|&i| (affinity_weight(ip, cands[i].key), std::cmp::Reverse(i))),
        (n, None) => {
            let a = (draws.0 % n as u64) as usize;
            // A second, different one.
            let b = (a + 1 + (draws.1 % (n as u64 - 1)) as usize) % n;
            let (ia, ib) = (pool[a], pool[b]);
            Some(if cands[ib].in_flight < cands[ia].in_flight {
                ib
            } else {
                ia
            })
        }
    }
}

/// The rendezvous weight of an endpoint for a client: a hash of both
/// (FNV-1a, then a final mix; stable across nodes and restarts, so every
/// node's proxy sends a client to the same pod).
fn affinity_weight(client: IpAddr, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let ip = match client {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    for b in ip.iter().chain([0xff].iter()).chain(key.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser: FNV's low bits alone mix poorly.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// How a request to an endpoint failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// It could not be reached (its node, or the pod there, is gone).
    Unreachable,
    /// It answered with a server error (500, 502, 503, 504).
    ServerError,
}

/// Server errors in a row that eject an endpoint.
pub const SERVER_ERRORS_TO_EJECT: u32 = 5;
/// How long a first ejection lasts; each one after doubles it.
pub const BASE_EJECTION: Duration = Duration::from_secs(2);
/// The longest an ejection lasts.
pub const MAX_EJECTION: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default)]
struct Health {
    server_errors: u32,
    /// Ejections since the endpoint last succeeded.
    ejections: u32,
    until: Option<Instant>,
}

/// Endpoints that failed, and until when they are left out.
#[derive(Debug, Default)]
pub struct Outliers {
    by_key: HashMap<String, Health>,
}

impl Outliers {
    /// Whether `key` is left out at `now`. Once its time is up it is let
    /// back: the next request to it is the probe.
    pub fn ejected(&self, key: &str, now: Instant) -> bool {
        self.by_key
            .get(key)
            .and_then(|h| h.until)
            .is_some_and(|until| now < until)
    }

    /// Records a failure of `key`; returns whether it was ejected by it.
    pub fn failed(&mut self, key: &str, failure: Failure, now: Instant) -> bool {
        let h = self.by_key.entry(key.to_string()).or_default();
        let eject = match failure {
            Failure::Unreachable => true,
            Failure::ServerError => {
                h.server_errors += 1;
                h.server_errors >= SERVER_ERRORS_TO_EJECT
            }
        };
        // Already out: the failure of a request sent before does not
        // lengthen it.
        if !eject || h.until.is_some_and(|u| now < u) {
            return false;
        }
        let factor = 1u32 << h.ejections.min(8);
        h.until = Some(now + (BASE_EJECTION * factor).min(MAX_EJECTION));
        h.ejections += 1;
        h.server_errors = 0;
        true
    }

    /// Records a success of `key`: it is healthy again.
    pub fn succeeded(&mut self, key: &str) {
        self.by_key.remove(key);
    }

    /// Forgets endpoints that are no longer in the table.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.by_key.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands<'a>(keys: &'a [&'a str], load: &[usize]) -> Vec<Candidate<'a>> {
        keys.iter()
            .zip(load)
            .map(|(k, l)| Candidate {
                key: k,
                in_flight: *l,
                excluded: false,
            })
            .collect()
    }

    #[test]
    fn two_choices_take_the_less_loaded() {
        let keys = ["a", "b", "c"];
        let c = cands(&keys, &[5, 0, 9]);
        // Draws a then b: b has fewer in flight.
        assert_eq!(pick(&c, None, (0, 0)), Some(1));
        // Draws c then a: a.
        assert_eq!(pick(&c, None, (2, 0)), Some(0));
        // The two draws are never the same endpoint.
        for d0 in 0..6 {
            for d1 in 0..6 {
                let got = pick(&cands(&keys, &[1, 1, 1]), None, (d0, d1));
                assert!(got.is_some());
            }
        }
        assert_eq!(pick(&[], None, (0, 0)), None);
        assert_eq!(pick(&cands(&keys[..1], &[7]), None, (3, 4)), Some(0));
    }

    #[test]
    fn every_endpoint_gets_picked_when_load_is_even() {
        let keys = ["a", "b", "c", "d"];
        let c = cands(&keys, &[0, 0, 0, 0]);
        let mut seen = [false; 4];
        for d in 0..16u64 {
            if let Some(i) = pick(&c, None, (d, d / 4)) {
                seen[i] = true;
            }
        }
        assert_eq!(seen, [true; 4]);
    }

    #[test]
    fn excluded_endpoints_are_skipped_unless_nothing_else_is_left() {
        let keys = ["a", "b"];
        let mut c = cands(&keys, &[0, 9]);
        c[0].excluded = true;
        for d in 0..8 {
            assert_eq!(pick(&c, None, (d, d)), Some(1));
        }
        c[1].excluded = true;
        assert!(pick(&c, None, (0, 0)).is_some(), "all excluded: still one");
    }

    #[test]
    fn affinity_sticks_and_moves_only_the_clients_of_a_gone_endpoint() {
        let keys = ["u1", "u2", "u3"];
        let c = cands(&keys, &[0, 0, 0]);
        let clients: Vec<IpAddr> = (1..=60u8).map(|i| IpAddr::from([192, 168, 1, i])).collect();
        let first: Vec<usize> = clients
            .iter()
            .map(|ip| pick(&c, Some(*ip), (0, 1)).expect("one"))
            .collect();
        // Sticky whatever the draws and the load.
        let loaded = cands(&keys, &[9, 0, 3]);
        for (ip, want) in clients.iter().zip(&first) {
            assert_eq!(pick(&loaded, Some(*ip), (5, 7)), Some(*want));
        }
        // Spread over all three.
        for i in 0..3 {
            assert!(first.contains(&i), "endpoint {i} gets clients");
        }
        // u2 goes: its clients move, nobody else's do.
        let mut gone = cands(&keys, &[0, 0, 0]);
        gone[1].excluded = true;
        for (ip, was) in clients.iter().zip(&first) {
            let now = pick(&gone, Some(*ip), (0, 1)).expect("one");
            if *was != 1 {
                assert_eq!(now, *was);
            } else {
                assert_ne!(now, 1);
            }
        }
    }

    #[test]
    fn unreachable_ejects_at_once_server_errors_after_several() {
        let t0 = Instant::now();
        let mut o = Outliers::default();
        assert!(o.failed("a", Failure::Unreachable, t0));
        assert!(o.ejected("a", t0 + Duration::from_secs(1)));
        // Let back after the ejection: the next request probes it.
        assert!(!o.ejected("a", t0 + BASE_EJECTION));
        // Failing again: out for twice as long.
        let t1 = t0 + BASE_EJECTION;
        assert!(o.failed("a", Failure::Unreachable, t1));
        assert!(o.ejected("a", t1 + BASE_EJECTION));
        assert!(!o.ejected("a", t1 + BASE_EJECTION * 2));
        // A success forgets it all.
        o.succeeded("a");
        assert!(!o.ejected("a", t1));
        for i in 1..SERVER_ERRORS_TO_EJECT {
            assert!(!o.failed("b", Failure::ServerError, t0), "error {i}");
        }
        assert!(o.failed("b", Failure::ServerError, t0));
        assert!(o.ejected("b", t0));
        // Ejections do not grow past the limit.
        let mut late = t0;
        for _ in 0..20 {
            late += MAX_EJECTION * 2;
            o.failed("c", Failure::Unreachable, late);
        }
        assert!(!o.ejected("c", late + MAX_EJECTION));
        o.retain(|k| k == "b");
        assert!(!o.ejected("c", late));
        assert!(o.ejected("b", t0));
    }
}
