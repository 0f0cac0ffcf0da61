//! Where the tasks that serve a broadcast's subscribers together are found.
//!
//! Both RTMP players (`ingest`'s `fanout`) and remote QUIC subscribers
//! (`quic::group`) are written to, once caught up, by one task per group of
//! at most `size` members of a broadcast, which wakes once per published frame
//! ([`BroadcastWake`](crate::BroadcastWake)). This is the bookkeeping they
//! share: which groups each broadcast instance has, how full they are, the
//! inbox a member joins through, and when an emptied group may stop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// A poisoned lock is taken as is: the bookkeeping under it stays consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The groups of one server, by broadcast instance ([`Subscriber::broadcast_id`](crate::Subscriber::broadcast_id)).
pub struct Registry<M> {
    size: usize,
    by_broadcast: Mutex<HashMap<usize, Vec<Arc<Group<M>>>>>,
    running: AtomicUsize,
    members: AtomicUsize,
}

/// One group: its task takes new members from the inbox.
pub struct Group<M> {
    inbox: Mutex<Vec<M>>,
    joined: Notify,
    /// Members in the group or its inbox (changed under the registry's lock).
    size: AtomicUsize,
}

impl<M> Registry<M> {
    /// Groups of at most `size` members (0: no groups; [`join`](Self::join) is then not called).
    pub fn new(size: usize) -> Self {
        Self {
            size,
            by_broadcast: Mutex::new(HashMap::new()),
            running: AtomicUsize::new(0),
            members: AtomicUsize::new(0),
        }
    }

    /// Most members per group (0: no groups).
    pub const fn size(&self) -> usize {
        self.size
    }

    /// Groups running now.
    pub fn running(&self) -> usize {
        self.running.load(Relaxed)
    }

    /// Members in a group now.
    pub fn members(&self) -> usize {
        self.members.load(Relaxed)
    }

    /// Members of broadcast `key`'s groups here (in them or in their inboxes).
    pub fn members_of(&self, key: usize) -> usize {
        lock(&self.by_broadcast).get(&key).map_or(0, |groups| groups.iter().map(|g| g.size.load(Relaxed)).sum())
    }

    /// Puts a member made by `make` (given its group) into a group of broadcast
    /// `key` with room; a new group is made when none has, and `start`ed
    /// (spawn its task there). Returns what `make` made.
    pub fn join(&self, key: usize, make: impl FnOnce(&Arc<Group<M>>) -> M, start: impl FnOnce(&Arc<Group<M>>)) -> M
    where
        M: Clone,
    {
        let mut registry = lock(&self.by_broadcast);
        let groups = registry.entry(key).or_default();
        let group = match groups.iter().find(|g| g.size.load(Relaxed) < self.size) {
            Some(g) => g.clone(),
            None => {
                let g = Arc::new(Group { inbox: Mutex::default(), joined: Notify::new(), size: AtomicUsize::new(0) });
                groups.push(g.clone());
                self.running.fetch_add(1, Relaxed);
                start(&g);
                g
            }
        };
        group.size.fetch_add(1, Relaxed);
        self.members.fetch_add(1, Relaxed);
        let member = make(&group);
        lock(&group.inbox).push(member.clone());
        drop(registry);
        group.joined.notify_one();
        member
    }

    /// After a pass in which `left` members left `group` (of broadcast `key`):
    /// `true` when it has no member left and is removed — its task ends; false
    /// while it has members (or one joined meanwhile).
    pub fn left(&self, key: usize, group: &Arc<Group<M>>, left: usize) -> bool {
        let remaining = group.size.load(Relaxed);
        if left == 0 && remaining > 0 {
            return false;
        }
        let mut registry = lock(&self.by_broadcast);
        self.members.fetch_sub(left, Relaxed);
        if group.size.fetch_sub(left, Relaxed) - left > 0 {
            return false;
        }
        self.running.fetch_sub(1, Relaxed);
        if let Some(groups) = registry.get_mut(&key) {
            groups.retain(|g| !Arc::ptr_eq(g, group));
            if groups.is_empty() {
                registry.remove(&key);
            }
        }
        true
    }
}

impl<M> Group<M> {
    /// Moves the members that joined since the last call into `members`.
    pub fn take_joined(&self, members: &mut Vec<M>) {
        members.append(&mut lock(&self.inbox));
    }

    /// Resolves when a member joins or [`wake`](Self::wake) is called; enable
    /// it before [`take_joined`](Self::take_joined) so none is missed.
    pub fn joined(&self) -> tokio::sync::futures::Notified<'_> {
        self.joined.notified()
    }

    /// Wakes the group's task (a member was taken back and should be forgotten).
    pub fn wake(&self) {
        self.joined.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_fill_up_to_their_size_and_go_when_empty() {
        let registry: Registry<u32> = Registry::new(2);
        let started = std::cell::Cell::new(0);
        let join = |key, m| {
            let mut group = None;
            registry.join(
                key,
                |g| {
                    group = Some(g.clone());
                    m
                },
                |_| started.set(started.get() + 1),
            );
            group.unwrap()
        };
        assert_eq!(registry.members_of(1), 0, "no group yet");
        let (a, b) = (join(1, 10), join(1, 11));
        assert_eq!(registry.members_of(1), 2, "the first group is full");
        let (c, other) = (join(1, 12), join(2, 20));
        assert!(Arc::ptr_eq(&a, &b), "room in the first group");
        assert!(!Arc::ptr_eq(&a, &c), "the third member starts a second group");
        assert!(!Arc::ptr_eq(&a, &other), "another broadcast, another group");
        assert_eq!(started.get(), 3);
        assert_eq!((registry.running(), registry.members()), (3, 4));
        assert_eq!((registry.members_of(1), registry.members_of(2), registry.members_of(3)), (3, 1, 0));
        let mut members = Vec::new();
        a.take_joined(&mut members);
        assert_eq!(members, vec![10, 11]);
        assert!(!registry.left(1, &a, 1), "one member is still there");
        assert!(registry.left(1, &a, 1), "the last one left: the group goes");
        assert_eq!((registry.running(), registry.members()), (2, 2));
        assert_eq!(registry.members_of(1), 1, "the emptied group's members are gone");
        // A new member of broadcast 1 finds room in the second group.
        let d = join(1, 13);
        assert!(Arc::ptr_eq(&c, &d));
    }
}
