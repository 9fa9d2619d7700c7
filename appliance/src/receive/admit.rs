//! Connections before their association: how many may wait, per source address and in all.
//!
//! An association slot (`receive.max_associations`) is taken only once an A-ASSOCIATE-RQ is
//! complete and accepted. Until then a connection holds a [`Ticket`] of its own, from a larger
//! pool (`receive.max_pending`, `receive.max_pending_per_source`) and for at most
//! `receive.request_timeout_s`: a flood of half-open connections from one address fills that
//! address's share and no more, and never locks real senders out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
    /// Where the total is shown (the status port's gauge).
    gauge: Arc<AtomicU64>,
}

/// Why a connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Source,
    Total,
}

impl Full {
    pub fn metric(&self) -> &'static str {
        match self {
            Full::Source => "pending_per_source",
            Full::Total => "pending_total",
        }
    }
}

/// The pool of pending connections.
#[derive(Debug, Clone)]
pub struct Pending {
    counts: Arc<Mutex<Counts>>,
    max_total: usize,
    max_per_source: usize,
}

/// One pending connection's place; given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Pending {
    /// A pool of `max_total` places, `max_per_source` per address; `gauge` always holds how
    /// many are taken.
    pub fn new(max_total: usize, max_per_source: usize, gauge: Arc<AtomicU64>) -> Pending {
        Pending {
            counts: Arc::new(Mutex::new(Counts {
                gauge,
                ..Counts::default()
            })),
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
        }
    }

    /// A place for a connection from `ip`, if its address and the pool have one.
    pub fn enter(&self, ip: IpAddr) -> Result<Ticket, Full> {
        let ip = canonical(ip);
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= self.max_total {
            return Err(Full::Total);
        }
        let n = c.per_source.entry(ip).or_insert(0);
        if *n >= self.max_per_source {
            return Err(Full::Source);
        }
        *n += 1;
        c.total += 1;
        c.gauge.store(c.total as u64, Ordering::Relaxed);
        Ok(Ticket {
            counts: self.counts.clone(),
            ip,
        })
    }

    /// Pending connections now.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        c.gauge.store(c.total as u64, Ordering::Relaxed);
        if let Some(n) = c.per_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_source.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_fills_its_share_and_no_more() {
        let gauge = Arc::new(AtomicU64::new(0));
        let p = Pending::new(5, 3, gauge.clone());
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<Ticket> = (0..3).map(|_| p.enter(a).unwrap()).collect();
        assert_eq!(p.enter(a).unwrap_err(), Full::Source);
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(p.enter(mapped).unwrap_err(), Full::Source, "same address");
        let b1 = p.enter(b).unwrap();
        let _b2 = p.enter(b).unwrap();
        assert_eq!(p.enter(b).unwrap_err(), Full::Total);
        assert_eq!(p.count(), 5);
        assert_eq!(gauge.load(Ordering::Relaxed), 5);
        drop(b1);
        assert!(p.enter(b).is_ok());
        drop(held);
        assert_eq!(p.count(), 1);
    }
}
