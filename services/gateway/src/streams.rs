//! Bounds on open security-event streams. Each one holds a poller in audit (a
//! transaction every 250 ms on its database pool) and a revocation re-check here, so
//! a leaked admin token or a runaway dashboard must not open them without end: at
//! most [`PER_ADMIN`] per administrator and [`PER_GATEWAY`] in all per gateway
//! instance; past that, 429.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Open streams per administrator (per gateway instance).
pub const PER_ADMIN: usize = 4;
/// Open streams per gateway instance.
pub const PER_GATEWAY: usize = 64;

/// The open streams, by administrator.
#[derive(Debug, Default)]
pub struct StreamSlots {
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream; its place is given back when dropped (the stream ends, or its
/// client goes).
#[derive(Debug)]
pub struct Slot {
    slots: Arc<StreamSlots>,
    admin: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.open.lock()
            && let Some(n) = open.get_mut(&self.admin)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.admin);
            }
        }
    }
}

impl StreamSlots {
    /// A place for one more stream of `admin`, if both bounds allow it.
    pub fn take(self: &Arc<Self>, admin: &str) -> Option<Slot> {
        let mut open = self.open.lock().ok()?;
        let total: usize = open.values().sum();
        let mine = open.get(admin).copied().unwrap_or(0);
        if total >= PER_GATEWAY || mine >= PER_ADMIN {
            return None;
        }
        *open.entry(admin.to_owned()).or_insert(0) += 1;
        Some(Slot {
            slots: Arc::clone(self),
            admin: admin.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_admin_and_the_instance_are_bounded_and_places_come_back() {
        let slots = Arc::new(StreamSlots::default());
        let ada: Vec<Slot> = (0..PER_ADMIN).filter_map(|_| slots.take("ada")).collect();
        assert_eq!(ada.len(), PER_ADMIN);
        assert!(slots.take("ada").is_none());
        drop(ada);
        assert!(slots.take("ada").is_some());
        let many: Vec<Slot> = (0..PER_GATEWAY)
            .filter_map(|n| slots.take(&format!("admin-{}", n / PER_ADMIN)))
            .collect();
        assert_eq!(many.len(), PER_GATEWAY);
        assert!(slots.take("someone-else").is_none());
    }
}
