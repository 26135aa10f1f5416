//! The queue lookup table: a source table keyed by `LPAR-ID.SUBCHANNEL#` and a target
//! table keyed by IP address, both hash tables of fixed capacity \[patent\].
//!
//! Both resolve to a queue control slot ([`SlotRef`]). The table holds no lock of its
//! own: the fabric's table lock guards it (exclusive for updates, shared for sends).
//!
//! Partitions choose the keys (their subchannel numbers and addresses), so the hash is
//! keyed with a seed the embedder gives once per fabric ([`HashSeed`]): a partition
//! that cannot compute the hash cannot pick keys that all land in one probe run and
//! slow everyone's lookups \[choice, issue 9 defect 7\].

use core::net::IpAddr;

use crate::error::RegistrationError;
use crate::transfer::NextHop;

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
///
/// The table holds unicast addresses (one entry each, unique) and group memberships:
/// a multicast group, or the broadcast domain under the limited broadcast address
/// 255.255.255.255, has one entry per member queue set, all under the group's address.
/// The two never share an address (a unicast registration refuses group addresses),
/// and a unicast lookup ignores group entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TargetEntry {
    pub(crate) slot: SlotRef,
    pub(crate) owner: SourceKey,
    /// A group membership rather than a unicast address.
    pub(crate) group: bool,
}

/// The 128-bit key of the tables' hash (SipHash's `k0`, `k1`).
///
/// The embedder sets it once per fabric ([`FabricConfig::hash_seed`](crate::FabricConfig::hash_seed)),
/// best from a source the partitions cannot read or guess (a hardware random number,
/// a boot-time counter mixed with a per-machine secret). With the published default
/// the table still works, but a partition that knows the seed can again choose keys
/// that collide.
pub type HashSeed = [u64; 2];

/// A value a free table slot holds: for the fabric's own key and value types, all-zero
/// bytes, so that an empty table is all-zero (a fabric starts all-zero: see
/// `Fabric::init_in_place`).
pub(crate) trait Zero: Copy {
    /// The value of a free slot.
    const ZERO: Self;
}

impl Zero for u8 {
    const ZERO: Self = 0;
}

impl Zero for u32 {
    const ZERO: Self = 0;
}

impl Zero for SlotRef {
    const ZERO: Self = Self {
        index: 0,
        generation: 0,
    };
}

impl Zero for SourceKey {
    const ZERO: Self = Self {
        lpar: 0,
        subchannel: 0,
    };
}

impl Zero for TargetEntry {
    const ZERO: Self = Self {
        slot: SlotRef::ZERO,
        owner: SourceKey::ZERO,
        group: false,
    };
}

impl Zero for IpAddr {
    // Only the crate's tests keep `IpAddr`s in a table (the fabric keeps `IpKey`s),
    // so its layout, which Rust does not specify, does not matter.
    const ZERO: Self = IpAddr::V4(core::net::Ipv4Addr::UNSPECIFIED);
}

/// An IP address as the target table keeps it: its encoding (a version byte, 4 or 6,
/// then the octets; zero-padded for IPv4). Plain bytes, unlike `IpAddr` whose layout
/// Rust leaves open, so a free slot is all-zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IpKey([u8; 17]);

/// The first byte of the target table's other keys: they never meet an IP address's
/// (4 or 6) nor one another.
const TAG_MAC: u8 = 0x02;
const TAG_VLAN: u8 = 0x03;
const TAG_GROUP_MAC: u8 = 0x05;
const TAG_BRIDGE: u8 = 0x07;

impl IpKey {
    /// A layer-2 queue set's unicast MAC address (unique in the fabric).
    pub(crate) fn mac(mac: &[u8; 6]) -> Self {
        let mut b = [0u8; 17];
        b[0] = TAG_MAC;
        b[1..7].copy_from_slice(mac);
        Self(b)
    }

    /// The members of VLAN `vid` (0: the untagged LAN).
    pub(crate) fn vlan(vid: u16) -> Self {
        let mut b = [0u8; 17];
        b[0] = TAG_VLAN;
        b[1..3].copy_from_slice(&vid.to_be_bytes());
        Self(b)
    }

    /// The members of a group (multicast) MAC address.
    pub(crate) fn group_mac(mac: &[u8; 6]) -> Self {
        let mut b = [0u8; 17];
        b[0] = TAG_GROUP_MAC;
        b[1..7].copy_from_slice(mac);
        Self(b)
    }

    /// The bridge port (at most one member).
    pub(crate) fn bridge() -> Self {
        let mut b = [0u8; 17];
        b[0] = TAG_BRIDGE;
        Self(b)
    }
}

impl From<&IpAddr> for IpKey {
    #[inline]
    fn from(ip: &IpAddr) -> Self {
        let mut b = [0u8; 17];
        ip.encode(&mut b);
        Self(b)
    }
}

impl Zero for IpKey {
    const ZERO: Self = Self([0; 17]);
}

impl TableKey for IpKey {
    const MAX_LEN: usize = 17;
    fn encode(&self, out: &mut [u8; 17]) -> usize {
        *out = self.0;
        // The same bytes IpAddr's encoding gives, so the hash is the same.
        if self.0[0] == 4 { 5 } else { 17 }
    }
}

/// How a key is hashed: its bytes, fed to [`KeyHash`].
pub(crate) trait TableKey: Zero + Eq {
    /// The longest encoding.
    const MAX_LEN: usize;
    /// Writes the key's encoding into `out` (at least `MAX_LEN` long); returns its length.
    fn encode(&self, out: &mut [u8; 17]) -> usize;
}

impl TableKey for IpAddr {
    const MAX_LEN: usize = 17;
    fn encode(&self, out: &mut [u8; 17]) -> usize {
        // A version byte first, so an IPv4 address and an IPv6 one never encode alike.
        match self {
            IpAddr::V4(a) => {
                out[0] = 4;
                out[1..5].copy_from_slice(&a.octets());
                5
            }
            IpAddr::V6(a) => {
                out[0] = 6;
                out[1..17].copy_from_slice(&a.octets());
                17
            }
        }
    }
}

impl TableKey for SourceKey {
    const MAX_LEN: usize = 3;
    fn encode(&self, out: &mut [u8; 17]) -> usize {
        out[0] = self.lpar;
        out[1..3].copy_from_slice(&self.subchannel.to_le_bytes());
        3
    }
}

/// A hash function over a key's bytes, keyed by the fabric's seed.
pub(crate) trait KeyHash {
    /// The hash of `bytes` under `seed`.
    fn hash(seed: &HashSeed, bytes: &[u8]) -> u64;
}

/// SipHash-1-3 (Aumasson and Bernstein, "SipHash: a fast short-input PRF", 2012; one
/// compression and three finalization rounds, the variant Rust's own `HashMap` uses).
///
/// Why SipHash and not a keyed multiply-xorshift: the partitions choose the keys and
/// see how fast their sends go, so the hash must stay unpredictable to someone who
/// can try many keys and observe timing; SipHash is a PRF built for exactly this
/// (hash flooding), while for multiply-xorshift mixers seed-independent collisions
/// and key recovery from a few outputs are known. It needs no tables and no heap,
/// and costs a few dozen instructions for a 17-byte key (six SipRounds), which the
/// send path pays once per buffer.
pub(crate) struct SipHash13;

impl KeyHash for SipHash13 {
    fn hash(seed: &HashSeed, bytes: &[u8]) -> u64 {
        siphash::<1, 3>(seed, bytes)
    }
}

/// SipHash-c-d of `msg` under `key`, as in the paper (little-endian words, the last
/// word carrying the length in its top byte).
fn siphash<const C: usize, const D: usize>(key: &HashSeed, msg: &[u8]) -> u64 {
    let mut v = [
        key[0] ^ 0x736f_6d65_7073_6575,
        key[1] ^ 0x646f_7261_6e64_6f6d,
        key[0] ^ 0x6c79_6765_6e65_7261,
        key[1] ^ 0x7465_6462_7974_6573,
    ];
    let compress = |v: &mut [u64; 4], m: u64| {
        v[3] ^= m;
        for _ in 0..C {
            sip_round(v);
        }
        v[0] ^= m;
    };
    let mut words = msg.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        compress(&mut v, u64::from_le_bytes(b));
    }
    let mut last = [0u8; 8];
    let tail = words.remainder();
    last[..tail.len()].copy_from_slice(tail);
    // The message length mod 256, as the paper's padding has it.
    last[7] = msg.len() as u8;
    compress(&mut v, u64::from_le_bytes(last));
    v[2] ^= 0xff;
    for _ in 0..D {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// One SipRound (the paper's ARX network).
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

#[derive(Clone, Copy)]
struct Entry<K, V> {
    /// The slot holds an entry (`false`, zero, in a free slot).
    used: bool,
    /// The key's hash, kept so deletion can move entries without hashing again.
    hash: u32,
    key: K,
    value: V,
}

/// An open-addressing hash table of `N` slots (a power of two) with linear probing
/// and backward-shift deletion (no tombstones, so a lookup's run never grows with
/// churn). It may fill completely; a lookup then still ends after `N` probes.
pub(crate) struct HashTable<K, V, const N: usize, H = SipHash13> {
    slots: [Entry<K, V>; N],
    len: usize,
    _hash: core::marker::PhantomData<H>,
}

impl<K: TableKey, V: Zero, const N: usize, H: KeyHash> HashTable<K, V, N, H> {
    const MASK: usize = N - 1;
    const FREE: Entry<K, V> = Entry {
        used: false,
        hash: 0,
        key: K::ZERO,
        value: V::ZERO,
    };

    const fn new() -> Self {
        assert!(N.is_power_of_two() && N <= 1 << 31);
        Self {
            slots: [Self::FREE; N],
            len: 0,
            _hash: core::marker::PhantomData,
        }
    }

    fn hash(seed: &HashSeed, key: &K) -> u32 {
        let mut buf = [0u8; 17];
        let n = key.encode(&mut buf).min(K::MAX_LEN);
        H::hash(seed, &buf[..n]) as u32
    }

    /// The slot holding `key`, and how many slots the lookup read (1 for a key in its
    /// home slot; for a miss, up to and including the empty slot that ends the run).
    fn find(&self, seed: &HashSeed, key: &K) -> (Option<usize>, usize) {
        let hash = Self::hash(seed, key);
        let mut i = hash as usize & Self::MASK;
        for probes in 1..=N {
            let e = &self.slots[i];
            if !e.used {
                return (None, probes);
            }
            if e.hash == hash && e.key == *key {
                return (Some(i), probes);
            }
            i = (i + 1) & Self::MASK;
        }
        (None, N)
    }

    fn get(&self, seed: &HashSeed, key: &K) -> Option<V> {
        let (i, _) = self.find(seed, key);
        self.slots.get(i?).filter(|e| e.used).map(|e| e.value)
    }

    /// Removes the first entry under `key` whose value `pick` chooses.
    fn remove_one(&mut self, seed: &HashSeed, key: &K, pick: impl Fn(&V) -> bool) -> Option<V> {
        let hash = Self::hash(seed, key);
        let home = hash as usize & Self::MASK;
        let i = (0..N)
            .map(|k| (home + k) & Self::MASK)
            .take_while(|&i| self.slots[i].used)
            .find(|&i| {
                let e = &self.slots[i];
                e.hash == hash && e.key == *key && pick(&e.value)
            })?;
        self.remove_at(i)
    }

    fn contains(&self, seed: &HashSeed, key: &K) -> bool {
        self.find(seed, key).0.is_some()
    }

    /// Inserts a key the caller knows is absent; `Err` when every slot is taken.
    fn insert_new(&mut self, seed: &HashSeed, key: K, value: V) -> Result<(), ()> {
        if self.len == N {
            return Err(());
        }
        let hash = Self::hash(seed, &key);
        let mut i = hash as usize & Self::MASK;
        // len < N: an empty slot is within N probes.
        for _ in 0..N {
            if !self.slots[i].used {
                self.slots[i] = Entry {
                    used: true,
                    hash,
                    key,
                    value,
                };
                self.len += 1;
                return Ok(());
            }
            i = (i + 1) & Self::MASK;
        }
        Err(())
    }

    /// Empties slot `i` and shifts the rest of its run back, so every entry stays
    /// reachable from its home slot without a gap.
    fn remove_at(&mut self, i: usize) -> Option<V> {
        let e = self.slots.get_mut(i).filter(|e| e.used)?;
        let value = e.value;
        *e = Self::FREE;
        self.len -= 1;
        let mut hole = i;
        let mut j = i;
        for _ in 0..N {
            j = (j + 1) & Self::MASK;
            let e = self.slots[j];
            if !e.used {
                break;
            }
            let home = e.hash as usize & Self::MASK;
            // The entry may move back to the hole if the hole lies between its home
            // and where it sits now (cyclically).
            if (j.wrapping_sub(home) & Self::MASK) >= (j.wrapping_sub(hole) & Self::MASK) {
                self.slots[hole] = e;
                self.slots[j] = Self::FREE;
                hole = j;
            }
        }
        Some(value)
    }

    fn remove(&mut self, seed: &HashSeed, key: &K) -> Option<V> {
        let (i, _) = self.find(seed, key);
        self.remove_at(i?)
    }

    /// Removes every entry `drop` says to; returns how many.
    fn remove_where(&mut self, mut drop: impl FnMut(&K, &V) -> bool) -> usize {
        let mut removed = 0;
        let mut i = 0;
        // A removal may shift a not yet visited entry into `i`, so `i` is read again
        // before moving on; entries shifted across the wrap were visited already.
        while i < N {
            match &self.slots[i] {
                e if e.used && drop(&e.key, &e.value) => {
                    self.remove_at(i);
                    removed += 1;
                }
                _ => i += 1,
            }
        }
        removed
    }
}

/// A sender's last unicast target lookup ([`QueueTable::target_cached`]), kept under
/// its outbound lock. All-zero bytes (epoch 0, which matches no epoch): none.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LastTarget {
    epoch: u64,
    /// The next hop looked up, as the send's descriptor holds it: the hit check is
    /// two words and a flag compared, no key built.
    hop: NextHop,
    entry: TargetEntry,
}

impl LastTarget {
    pub(crate) const EMPTY: Self = Self {
        epoch: 0,
        hop: NextHop::UNSPECIFIED,
        entry: TargetEntry::ZERO,
    };
}

/// Source and target tables. `Q` and `A` are capacities (powers of two).
pub(crate) struct QueueTable<const Q: usize, const A: usize, H = SipHash13> {
    /// The seed XOR [`FabricConfig::DEFAULT_SEED`](crate::FabricConfig::DEFAULT_SEED):
    /// zero for the default seed, so a fabric built with the default settings is
    /// all-zero bytes and a `static` of it can start in `.bss` (the embedder then sets
    /// its secret seed at boot, `Fabric::set_hash_seed`). Two XORs per hash.
    seed_delta: HashSeed,
    source: HashTable<SourceKey, SlotRef, Q, H>,
    target: HashTable<IpKey, TargetEntry, A, H>,
}

const DEFAULT_SEED: HashSeed = crate::FabricConfig::DEFAULT_SEED;

const fn seed_delta(seed: HashSeed) -> HashSeed {
    [seed[0] ^ DEFAULT_SEED[0], seed[1] ^ DEFAULT_SEED[1]]
}

impl<const Q: usize, const A: usize, H: KeyHash> QueueTable<Q, A, H> {
    pub(crate) const fn new(seed: HashSeed) -> Self {
        Self {
            seed_delta: seed_delta(seed),
            source: HashTable::new(),
            target: HashTable::new(),
        }
    }

    /// Sets the seed of a table being built in place from zero bytes (an empty table
    /// with the default seed), without building a table on the stack.
    ///
    /// # Safety
    ///
    /// `this` is valid for writes and points to a `QueueTable` (all-zero is one).
    // Its one caller, `Fabric::init_in_place`, is not built under loom.
    #[cfg(not(iqdio_loom))]
    pub(crate) unsafe fn init_seed(this: *mut Self, seed: HashSeed) {
        // SAFETY: by this function's contract; only the seed field is written.
        unsafe { core::ptr::addr_of_mut!((*this).seed_delta).write(seed_delta(seed)) };
    }

    /// Replaces the seed of empty tables (`SeedInUse` if they are not).
    pub(crate) fn reseed(&mut self, seed: HashSeed) -> Result<(), RegistrationError> {
        if self.source.len != 0 || self.target.len != 0 {
            return Err(RegistrationError::SeedInUse);
        }
        self.seed_delta = seed_delta(seed);
        Ok(())
    }

    /// The hash seed.
    pub(crate) const fn seed(&self) -> HashSeed {
        // XOR is its own inverse.
        seed_delta(self.seed_delta)
    }

    /// Adds a source entry: Duplicate Found when the key exists, table-full when the
    /// table is.
    pub(crate) fn add_source(
        &mut self,
        key: SourceKey,
        slot: SlotRef,
    ) -> Result<(), RegistrationError> {
        if self.source.contains(&self.seed(), &key) {
            return Err(RegistrationError::DuplicateFound);
        }
        self.source
            .insert_new(&self.seed(), key, slot)
            .map_err(|()| RegistrationError::TableFull)
    }

    /// Adds a target entry for `ip`, linked to the queue control of `owner`'s source
    /// entry [patent: "look the issuer's LPAR-ID.SUBCHANNEL# up in the source table"].
    #[cfg(test)]
    pub(crate) fn add_target(
        &mut self,
        ip: IpAddr,
        owner: SourceKey,
    ) -> Result<SlotRef, RegistrationError> {
        self.add_unique(IpKey::from(&ip), owner)
    }

    /// As [`add_member`](Self::add_member), for any group key.
    pub(crate) fn add_member_key(
        &mut self,
        key: IpKey,
        owner: SourceKey,
    ) -> Result<SlotRef, RegistrationError> {
        if self.members_key(key).any(|e| e.owner == owner) {
            return Err(RegistrationError::DuplicateFound);
        }
        self.insert_entry(key, owner, true)
    }

    /// Inserts an entry under `key` for the queue set `owner` (unique or a group
    /// membership: the caller checked for a duplicate), linked to the queue control of
    /// its source entry [patent: "look the issuer's LPAR-ID.SUBCHANNEL# up in the source
    /// table"].
    fn insert_entry(
        &mut self,
        key: IpKey,
        owner: SourceKey,
        group: bool,
    ) -> Result<SlotRef, RegistrationError> {
        let slot = self
            .source(&owner)
            .ok_or(RegistrationError::SourceNotRegistered)?;
        self.target
            .insert_new(&self.seed(), key, TargetEntry { slot, owner, group })
            .map_err(|()| RegistrationError::TableFull)?;
        Ok(slot)
    }

    /// The member queue sets of `group`.
    pub(crate) fn members(&self, group: &IpAddr) -> impl Iterator<Item = TargetEntry> + '_ {
        self.members_key(IpKey::from(group))
    }

    /// The member queue sets under any group key.
    pub(crate) fn members_key(&self, key: IpKey) -> impl Iterator<Item = TargetEntry> + '_ {
        let seed = self.seed();
        let hash = HashTable::<IpKey, TargetEntry, A, H>::hash(&seed, &key);
        let home = hash as usize & (A - 1);
        // Every entry under the key lies in the run from its home slot to the first
        // empty slot (linear probing with backward-shift deletion keeps it so).
        (0..A)
            .map(move |k| &self.target.slots[(home + k) & (A - 1)])
            .take_while(|e| e.used)
            .filter(move |e| e.hash == hash && e.key == key && e.value.group)
            .map(|e| e.value)
    }

    /// As [`remove_member`](Self::remove_member), for any group key.
    pub(crate) fn remove_member_key(
        &mut self,
        key: IpKey,
        owner: SourceKey,
    ) -> Result<(), RegistrationError> {
        self.target
            .remove_one(&self.seed(), &key, |e| e.group && e.owner == owner)
            .map(|_| ())
            .ok_or(RegistrationError::NotFound)
    }

    /// Adds a unique (non-group) entry under `key` for `owner`: Duplicate Found if the
    /// key is taken (by anyone).
    pub(crate) fn add_unique(
        &mut self,
        key: IpKey,
        owner: SourceKey,
    ) -> Result<SlotRef, RegistrationError> {
        if self.unique(key).is_some() {
            return Err(RegistrationError::DuplicateFound);
        }
        self.insert_entry(key, owner, false)
    }

    /// The unique entry under `key`.
    pub(crate) fn unique(&self, key: IpKey) -> Option<TargetEntry> {
        self.target.get(&self.seed(), &key).filter(|e| !e.group)
    }

    /// Removes the unique entry under `key` if `owner` holds it.
    pub(crate) fn remove_unique(
        &mut self,
        key: IpKey,
        owner: SourceKey,
    ) -> Result<(), RegistrationError> {
        match self.unique(key) {
            Some(e) if e.owner == owner => {
                self.target.remove_one(&self.seed(), &key, |e| !e.group);
                Ok(())
            }
            _ => Err(RegistrationError::NotFound),
        }
    }

    /// The queue control of an issuer.
    pub(crate) fn source(&self, key: &SourceKey) -> Option<SlotRef> {
        self.source.get(&self.seed(), key)
    }

    /// The queue control a unicast IP address is delivered to (never a group's
    /// member: a unicast frame to a group address is unreachable).
    pub(crate) fn target(&self, ip: &IpAddr) -> Option<TargetEntry> {
        self.target
            .get(&self.seed(), &IpKey::from(ip))
            .filter(|e| !e.group)
    }

    /// [`target`](Self::target) through a sender's `last` lookup: when the sender
    /// names the address it named last, in the same fabric `epoch` (no update of the
    /// table since: updates start a new epoch), the entry found then is the answer
    /// without hashing (issue 12: the keyed hash and the probe were 190 of a 64 B
    /// send's instructions, for what a sender usually asks again and again).
    ///
    /// The keyed hash keeps its purpose: whatever misses the cache goes through it, so
    /// a partition still cannot make anyone's lookups slow by choosing keys; what a
    /// hit or a miss takes tells a sender only whether it named the same address
    /// twice, which it knows. Only hits are kept (an unreachable address is looked up
    /// every time, as before).
    ///
    /// The hit is always inlined into the send; the miss is a call of its own.
    #[inline(always)]
    pub(crate) fn target_cached(
        &self,
        hop: NextHop,
        epoch: u64,
        last: &mut LastTarget,
    ) -> Option<TargetEntry> {
        if last.epoch == epoch && epoch != 0 && last.hop == hop {
            return Some(last.entry);
        }
        self.target_missed(hop, epoch, last)
    }

    /// [`target_cached`](Self::target_cached) when `last` does not answer: the keyed
    /// lookup, kept in `last` if it finds an entry.
    #[inline(never)]
    fn target_missed(
        &self,
        hop: NextHop,
        epoch: u64,
        last: &mut LastTarget,
    ) -> Option<TargetEntry> {
        let key = IpKey::from(&hop.ip());
        let entry = self.target.get(&self.seed(), &key).filter(|e| !e.group)?;
        *last = LastTarget { epoch, hop, entry };
        Some(entry)
    }

    /// Slots a lookup of `ip` reads (the cost of a send to it, hit or miss).
    #[cfg(test)]
    pub(crate) fn target_probes(&self, ip: &IpAddr) -> usize {
        self.target.find(&self.seed(), &IpKey::from(ip)).1
    }

    /// Removes `ip` if `owner` registered it.
    #[cfg(test)]
    pub(crate) fn remove_target(
        &mut self,
        ip: &IpAddr,
        owner: SourceKey,
    ) -> Result<(), RegistrationError> {
        self.remove_unique(IpKey::from(ip), owner)
    }

    /// Removes every target entry of `owner`, then its source entry [choice: mirror of
    /// registration]. Returns the slot it referred to and how many addresses went.
    pub(crate) fn remove_queue_set(&mut self, owner: SourceKey) -> Option<(SlotRef, usize)> {
        let slot = self.source.remove(&self.seed(), &owner)?;
        let addresses = self.target.remove_where(|_, e| e.owner == owner);
        Some((slot, addresses))
    }

    /// Entries in the target table.
    pub(crate) fn target_len(&self) -> usize {
        self.target.len
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

    const SEED: HashSeed = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn duplicate_source_is_refused() {
        let mut t = QueueTable::<4, 8>::new(SEED);
        t.add_source(K1, S1).unwrap();
        assert_eq!(t.add_source(K1, S2), Err(RegistrationError::DuplicateFound));
        assert_eq!(RegistrationError::DuplicateFound.code(), 0xE005);
        assert_eq!(t.source(&K1), Some(S1));
    }

    #[test]
    fn full_tables_say_so() {
        let mut t = QueueTable::<2, 2>::new(SEED);
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
        let mut t = QueueTable::<4, 8>::new(SEED);
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
        let mut t = QueueTable::<4, 8>::new(SEED);
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
        let mut t = QueueTable::<4, 8>::new(SEED);
        t.add_source(K1, S1).unwrap();
        t.add_source(K2, S2).unwrap();
        for i in 0..4 {
            t.add_target(v4(i), K1).unwrap();
        }
        t.add_target(v4(100), K2).unwrap();
        assert_eq!(t.remove_queue_set(K1), Some((S1, 4)));
        assert_eq!(t.remove_queue_set(K1), None);
        assert_eq!(t.target_len(), 1);
        assert!(t.source(&K1).is_none());
        assert_eq!(t.target(&v4(100)).unwrap().slot, S2);
        // The key and the addresses can be registered again.
        t.add_source(K1, S1).unwrap();
        t.add_target(v4(0), K1).unwrap();
    }

    /// The hash the target table had before it was keyed: FNV-1a (32 bits) over the
    /// same bytes, as heapless's `FnvIndexMap` hashed; unkeyed, so anyone can search
    /// for collisions offline.
    struct Fnv1a;

    impl KeyHash for Fnv1a {
        fn hash(_: &HashSeed, bytes: &[u8]) -> u64 {
            let mut h: u32 = 0x811c_9dc5;
            for b in bytes {
                h ^= u32::from(*b);
                h = h.wrapping_mul(0x0100_0193);
            }
            u64::from(h)
        }
    }

    #[test]
    fn siphash_matches_the_reference() {
        // SipHash-2-4 test vector of the paper (appendix A): key 00..0f, message
        // 00..0e.
        let key = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash::<2, 4>(&key, &msg), 0xa129_ca61_49be_45e5);
        // And core's SipHash-2-4 for every length a key can have and then some.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..40 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let key = [x, x.rotate_left(17) ^ 0x55];
            let msg: Vec<u8> = (0..len).map(|i| (x >> (i % 8)) as u8 ^ i as u8).collect();
            #[allow(deprecated)]
            let mut h = core::hash::SipHasher::new_with_keys(key[0], key[1]);
            core::hash::Hasher::write(&mut h, &msg);
            assert_eq!(
                siphash::<2, 4>(&key, &msg),
                core::hash::Hasher::finish(&h),
                "{len}"
            );
        }
        // The table's variant takes the seed into account.
        let ip = v4(1);
        assert_ne!(
            HashTable::<IpAddr, u8, 8>::hash(&SEED, &ip),
            HashTable::<IpAddr, u8, 8>::hash(&[SEED[0], SEED[1] ^ 1], &ip)
        );
    }

    #[test]
    // 20 000 steps of safe code: hours under Miri, which the other table tests cover.
    #[cfg_attr(miri, ignore)]
    fn the_table_agrees_with_a_model_under_churn() {
        // A small table, so runs wrap around its end and removals shift them back.
        let mut t = HashTable::<IpAddr, u32, 64>::new();
        let mut model = std::collections::HashMap::new();
        let mut x = 1u64;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ip = v4((x % 80) as u8);
            if x >> 60 < 9 {
                // Callers insert only absent keys (they look first, as here).
                assert_eq!(t.contains(&SEED, &ip), model.contains_key(&ip));
                if model.contains_key(&ip) {
                    continue;
                }
                let added = t.insert_new(&SEED, ip, step);
                if model.len() == 64 {
                    assert_eq!(added, Err(()));
                    continue;
                }
                assert_eq!(added, Ok(()));
                model.insert(ip, step);
            } else {
                assert_eq!(t.remove(&SEED, &ip), model.remove(&ip));
            }
            assert_eq!(t.len, model.len());
        }
        for last in 0..80u8 {
            assert_eq!(t.get(&SEED, &v4(last)), model.get(&v4(last)).copied());
        }
        let gone = t.remove_where(|_, v| v % 2 == 0);
        let before = model.len();
        model.retain(|_, v| *v % 2 != 0);
        assert_eq!(gone, before - model.len());
        for last in 0..80u8 {
            assert_eq!(t.get(&SEED, &v4(last)), model.get(&v4(last)).copied());
        }
    }

    /// The attack: 256 IPv6 addresses (a partition's default quota) chosen
    /// offline to share one bucket of the unkeyed FNV table, the bucket of an address
    /// another partition registers afterwards.
    #[test]
    // A million hashes to find the colliding addresses, all safe code: hours under Miri.
    #[cfg_attr(miri, ignore)]
    fn colliding_addresses_do_not_slow_the_others_lookups() {
        const A: usize = 4096;
        let victim = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 2, 1));
        let bucket = |ip: &IpAddr| HashTable::<IpAddr, u8, A, Fnv1a>::hash(&SEED, ip) as usize % A;
        let target = bucket(&victim);
        let attack: Vec<IpAddr> = (1u32..)
            .map(|i| {
                IpAddr::V6(Ipv6Addr::new(
                    0xfd00,
                    0,
                    0,
                    0,
                    0,
                    1,
                    (i >> 16) as u16,
                    i as u16,
                ))
            })
            .filter(|ip| bucket(ip) == target)
            .take(256)
            .collect();
        let others: Vec<IpAddr> = (0..64u16)
            .map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 3, i)))
            .chain([victim])
            .collect();
        let missing: Vec<IpAddr> = (0..64u16)
            .map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 4, i)))
            .collect();
        fn fill<H: KeyHash>(t: &mut QueueTable<4, A, H>, attack: &[IpAddr], others: &[IpAddr]) {
            t.add_source(K1, S1).unwrap();
            t.add_source(K2, S2).unwrap();
            for ip in attack {
                t.add_target(*ip, K1).unwrap();
            }
            for ip in others {
                t.add_target(*ip, K2).unwrap();
            }
        }
        let mut old = Box::new(QueueTable::<4, A, Fnv1a>::new(SEED));
        fill(&mut old, &attack, &others);
        let mut keyed = Box::new(QueueTable::<4, A>::new(SEED));
        fill(&mut keyed, &attack, &others);
        // Unkeyed: the victim's lookup walks the whole run of the attacker's addresses.
        assert!(old.target_probes(&victim) > attack.len());
        // Keyed: every lookup of the others, hit or miss, stays short. (Deterministic:
        // fixed seed, fixed addresses. At this load, 321 of 4096, linear probing
        // averages about one probe; the bound leaves room, and is 32 times below the
        // unkeyed walk.)
        for ip in others.iter().chain(missing.iter()) {
            let n = keyed.target_probes(ip);
            assert!(n <= 8, "{ip}: {n} probes");
        }
        let total: usize = others
            .iter()
            .chain(missing.iter())
            .map(|ip| keyed.target_probes(ip))
            .sum();
        assert!(
            total <= 2 * (others.len() + missing.len()),
            "{total} probes"
        );
        assert_eq!(keyed.target(&victim).unwrap().owner, K2);
    }
}
