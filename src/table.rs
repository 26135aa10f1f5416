//! The queue lookup table: a source table keyed by `LPAR-ID.SUBCHANNEL#` and a target
//! table keyed by IP address, both hash tables of fixed capacity \[patent\].
//!
//! Both resolve to a queue control slot ([`SlotRef`]). The table holds no lock of its
//! own: the fabric's table lock guards it (exclusive for updates, shared for sends).

use core::net::IpAddr;

use heapless::index_map::FnvIndexMap;

use crate::error::RegistrationError;

/// A partition's id (LPAR id).
pub type LparId = u8;

/// Key of the source table: the issuer's `LPAR-ID.SUBCHANNEL#`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// The partition.
    pub lpar: LparId,
    /// The subchannel (device number) inside the partition.
    pub subchannel: u16,
}

/// A reference to a queue-control slot with the generation it had when the reference
/// was made: a slot reused by a new owner has a new generation, so a stale reference
/// never reaches the new owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRef {
    /// Index of the queue control.
    pub index: u16,
    /// Generation of the slot when this reference was made.
    pub generation: u32,
}

/// A target-table entry: the queue control and the queue set that registered the IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TargetEntry {
    pub(crate) slot: SlotRef,
    pub(crate) owner: SourceKey,
}

/// Source and target tables. `Q` and `A` are capacities (powers of two).
pub(crate) struct QueueTable<const Q: usize, const A: usize> {
    source: FnvIndexMap<SourceKey, SlotRef, Q>,
    target: FnvIndexMap<IpAddr, TargetEntry, A>,
}

impl<const Q: usize, const A: usize> QueueTable<Q, A> {
    pub(crate) const fn new() -> Self {
        Self {
            source: FnvIndexMap::new(),
            target: FnvIndexMap::new(),
        }
    }

    /// Adds a source entry: Duplicate Found when the key exists, table-full when the
    /// table is.
    pub(crate) fn add_source(
        &mut self,
        key: SourceKey,
        slot: SlotRef,
    ) -> Result<(), RegistrationError> {
        if self.source.contains_key(&key) {
            return Err(RegistrationError::DuplicateFound);
        }
        self.source
            .insert(key, slot)
            .map(|_| ())
            .map_err(|_| RegistrationError::TableFull)
    }

    /// Adds a target entry for `ip`, linked to the queue control of `owner`'s source
    /// entry [patent: "look the issuer's LPAR-ID.SUBCHANNEL# up in the source table"].
    pub(crate) fn add_target(
        &mut self,
        ip: IpAddr,
        owner: SourceKey,
    ) -> Result<SlotRef, RegistrationError> {
        if self.target.contains_key(&ip) {
            return Err(RegistrationError::DuplicateFound);
        }
        let slot = *self
            .source
            .get(&owner)
            .ok_or(RegistrationError::SourceNotRegistered)?;
        self.target
            .insert(ip, TargetEntry { slot, owner })
            .map_err(|_| RegistrationError::TableFull)?;
        Ok(slot)
    }

    /// The queue control of an issuer.
    pub(crate) fn source(&self, key: &SourceKey) -> Option<SlotRef> {
        self.source.get(key).copied()
    }

    /// The queue control an IP address is delivered to.
    pub(crate) fn target(&self, ip: &IpAddr) -> Option<TargetEntry> {
        self.target.get(ip).copied()
    }

    /// Removes `ip` if `owner` registered it.
    pub(crate) fn remove_target(
        &mut self,
        ip: &IpAddr,
        owner: SourceKey,
    ) -> Result<(), RegistrationError> {
        match self.target.get(ip) {
            Some(e) if e.owner == owner => {
                self.target.swap_remove(ip);
                Ok(())
            }
            _ => Err(RegistrationError::NotFound),
        }
    }

    /// Removes every target entry of `owner`, then its source entry [choice: mirror of
    /// registration]. Returns the slot it referred to.
    pub(crate) fn remove_queue_set(&mut self, owner: SourceKey) -> Option<SlotRef> {
        let slot = self.source.swap_remove(&owner)?;
        self.target.retain(|_, e| e.owner != owner);
        Some(slot)
    }

    /// Entries in the target table.
    pub(crate) fn target_len(&self) -> usize {
        self.target.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};

    const K1: SourceKey = SourceKey {
        lpar: 1,
        subchannel: 0x100,
    };
    const K2: SourceKey = SourceKey {
        lpar: 2,
        subchannel: 0x100,
    };
    const S1: SlotRef = SlotRef {
        index: 0,
        generation: 1,
    };
    const S2: SlotRef = SlotRef {
        index: 1,
        generation: 1,
    };

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn duplicate_source_is_refused() {
        let mut t = QueueTable::<4, 8>::new();
        t.add_source(K1, S1).unwrap();
        assert_eq!(t.add_source(K1, S2), Err(RegistrationError::DuplicateFound));
        assert_eq!(RegistrationError::DuplicateFound.code(), 0xE005);
        assert_eq!(t.source(&K1), Some(S1));
    }

    #[test]
    fn full_tables_say_so() {
        let mut t = QueueTable::<2, 2>::new();
        t.add_source(K1, S1).unwrap();
        t.add_source(K2, S2).unwrap();
        let k3 = SourceKey {
            lpar: 3,
            subchannel: 0,
        };
        assert_eq!(t.add_source(k3, S1), Err(RegistrationError::TableFull));
        t.add_target(v4(1), K1).unwrap();
        t.add_target(v4(2), K1).unwrap();
        assert_eq!(t.add_target(v4(3), K2), Err(RegistrationError::TableFull));
        assert_eq!(RegistrationError::TableFull.code(), 0xE006);
    }

    #[test]
    fn targets_need_their_source_and_are_unique_across_owners() {
        let mut t = QueueTable::<4, 8>::new();
        assert_eq!(
            t.add_target(v4(1), K1),
            Err(RegistrationError::SourceNotRegistered)
        );
        t.add_source(K1, S1).unwrap();
        t.add_source(K2, S2).unwrap();
        assert_eq!(t.add_target(v4(1), K1), Ok(S1));
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
        assert_eq!(t.add_target(v6, K1), Ok(S1));
        assert_eq!(
            t.add_target(v4(1), K2),
            Err(RegistrationError::DuplicateFound)
        );
        assert_eq!(t.target(&v4(1)).unwrap().slot, S1);
        assert_eq!(t.target(&v6).unwrap().owner, K1);
        assert_eq!(t.target_len(), 2);
    }

    #[test]
    fn only_the_owner_removes_an_address() {
        let mut t = QueueTable::<4, 8>::new();
        t.add_source(K1, S1).unwrap();
        t.add_source(K2, S2).unwrap();
        t.add_target(v4(1), K1).unwrap();
        assert_eq!(
            t.remove_target(&v4(1), K2),
            Err(RegistrationError::NotFound)
        );
        assert_eq!(
            t.remove_target(&v4(9), K1),
            Err(RegistrationError::NotFound)
        );
        assert_eq!(t.remove_target(&v4(1), K1), Ok(()));
        assert!(t.target(&v4(1)).is_none());
    }

    #[test]
    fn removing_a_queue_set_removes_all_its_addresses_and_nothing_else() {
        let mut t = QueueTable::<4, 8>::new();
        t.add_source(K1, S1).unwrap();
        t.add_source(K2, S2).unwrap();
        for i in 0..4 {
            t.add_target(v4(i), K1).unwrap();
        }
        t.add_target(v4(100), K2).unwrap();
        assert_eq!(t.remove_queue_set(K1), Some(S1));
        assert_eq!(t.remove_queue_set(K1), None);
        assert_eq!(t.target_len(), 1);
        assert!(t.source(&K1).is_none());
        assert_eq!(t.target(&v4(100)).unwrap().slot, S2);
        // The key and the addresses can be registered again.
        t.add_source(K1, S1).unwrap();
        t.add_target(v4(0), K1).unwrap();
    }
}
