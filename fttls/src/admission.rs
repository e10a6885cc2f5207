//! Which connections a server takes on before they authenticate: at most
//! so many in all, and so many from one address, so that idle connections
//! cost bounded memory and one host's flood leaves room for the cluster's
//! own peers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub struct Admission {
    total: usize,
    per_address: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place, given back when it drops.
pub struct Admitted {
    admission: Arc<Admission>,
    addr: IpAddr,
}

impl Admission {
    pub fn new(total: usize, per_address: usize) -> Arc<Admission> {
        Arc::new(Admission {
            total,
            per_address,
            counts: Mutex::default(),
        })
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a connection from `addr`, or why there is none.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Result<Admitted, String> {
        let mut counts = self.counts();
        let in_all: usize = counts.values().sum();
        if in_all >= self.total {
            return Err(format!("{in_all} connections already"));
        }
        let from_addr = counts.entry(addr).or_default();
        if *from_addr >= self.per_address {
            return Err(format!("{from_addr} connections from {addr} already"));
        }
        *from_addr += 1;
        Ok(Admitted {
            admission: self.clone(),
            addr,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        if let Some(count) = counts.get_mut(&self.addr) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_in_all_and_per_address_and_given_back() {
        let admission = Admission::new(3, 2);
        let (a, b): (IpAddr, IpAddr) =
            ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap());
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(
            admission.admit(a).err().as_deref(),
            Some("2 connections from 198.18.0.1 already")
        );
        let _third = admission.admit(b).unwrap();
        assert_eq!(
            admission.admit(b).err().as_deref(),
            Some("3 connections already")
        );
        drop(first);
        assert!(admission.admit(a).is_ok());
    }
}
