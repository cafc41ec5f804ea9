//! A slab whose keys carry a generation, so that a key to a freed slot
//! never reaches the slot's next occupant (SEMANTICS X4: a stale handle or
//! operation id is refused, not misdirected).

/// Storage for values addressed by `(index, generation)`.
#[derive(Debug)]
pub(crate) struct Slab<V> {
    entries: Vec<Entry<V>>,
    /// Head of the free list, `u32::MAX` when empty.
    free: u32,
    len: usize,
}

#[derive(Debug)]
struct Entry<V> {
    generation: u32,
    slot: Slot<V>,
}

#[derive(Debug)]
enum Slot<V> {
    Full(V),
    Free { next: u32 },
}

const NONE: u32 = u32::MAX;

impl<V> Slab<V> {
    pub(crate) fn new() -> Self {
        Slab {
            entries: Vec::new(),
            free: NONE,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Stores `v`; returns its `(index, generation)`.
    pub(crate) fn insert(&mut self, v: V) -> (u32, u32) {
        self.len += 1;
        if self.free != NONE {
            let index = self.free;
            let e = &mut self.entries[index as usize];
            if let Slot::Free { next } = e.slot {
                self.free = next;
            }
            e.slot = Slot::Full(v);
            (index, e.generation)
        } else {
            let index = self.entries.len() as u32;
            assert!(index != NONE, "slab full");
            self.entries.push(Entry {
                generation: 0,
                slot: Slot::Full(v),
            });
            (index, 0)
        }
    }

    pub(crate) fn get(&self, index: u32, generation: u32) -> Option<&V> {
        match self.entries.get(index as usize) {
            Some(Entry {
                generation: g,
                slot: Slot::Full(v),
            }) if *g == generation => Some(v),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, index: u32, generation: u32) -> Option<&mut V> {
        match self.entries.get_mut(index as usize) {
            Some(Entry {
                generation: g,
                slot: Slot::Full(v),
            }) if *g == generation => Some(v),
            _ => None,
        }
    }

    /// Removes and returns the value; the slot's generation moves on.
    pub(crate) fn remove(&mut self, index: u32, generation: u32) -> Option<V> {
        let e = self.entries.get_mut(index as usize)?;
        if e.generation != generation || matches!(e.slot, Slot::Free { .. }) {
            return None;
        }
        let old = std::mem::replace(&mut e.slot, Slot::Free { next: self.free });
        e.generation = e.generation.wrapping_add(1);
        self.free = index;
        self.len -= 1;
        match old {
            Slot::Full(v) => Some(v),
            Slot::Free { .. } => None,
        }
    }

    /// Every stored value with its `(index, generation)`.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = ((u32, u32), &mut V)> {
        self.entries
            .iter_mut()
            .enumerate()
            .filter_map(|(i, e)| match &mut e.slot {
                Slot::Full(v) => Some(((i as u32, e.generation), v)),
                Slot::Free { .. } => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;

    #[test]
    fn x4_stale_key_does_not_reach_new_occupant() {
        let mut s = Slab::new();
        let (i, g) = s.insert("old");
        assert_eq!(s.remove(i, g), Some("old"));
        let (i2, g2) = s.insert("new");
        assert_eq!(i2, i, "the slot is reused");
        assert_ne!(g2, g, "with a new generation");
        assert_eq!(s.get(i, g), None);
        assert_eq!(s.remove(i, g), None);
        assert_eq!(s.get(i2, g2), Some(&"new"));
        assert_eq!(s.len(), 1);
    }
}
