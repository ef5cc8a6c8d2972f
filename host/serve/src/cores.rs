//! The cores, shared among tenants for plugin work: fair while tenants compete, and
//! work-conserving when they do not.
//!
//! A batch runs in a tenant's plugins only while it holds a [`Slot`]; there are as many slots
//! as cores. A tenant's share is the slots divided among the tenants with work — holding a
//! slot, waiting for one, or done with one within the last [`RECENT`]: a tenant streaming
//! steadily has gaps between its batches, and those gaps must not hand its share away. A
//! tenant below its share is served first; one at or above it gets a free slot only while no
//! other tenant has work. So a busy tenant alone may use every core, and when another
//! tenant's work arrives, the next slot to free up goes to it: a busy tenant holds more than
//! its share for at most the length of one batch, which each plugin's deadline bounds.
//!
//! A waiter that gives up (its pipeline stops) leaves nothing behind: a slot handed to a gone
//! waiter comes straight back.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long a tenant counts as having work after its last slot came back.
pub const RECENT: Duration = Duration::from_millis(500);

/// The slots, and who holds and waits for them.
#[derive(Debug)]
pub struct Cores {
    slots: usize,
    state: Mutex<Schedule>,
}

#[derive(Debug)]
struct Schedule {
    free: usize,
    /// Slots held, per tenant.
    held: Vec<usize>,
    /// When each tenant last gave a slot back.
    returned: Vec<Option<Instant>>,
    /// Waiters in arrival order.
    waiting: VecDeque<(usize, oneshot::Sender<Slot>)>,
}

impl Schedule {
    /// Whether `tenant` holds a slot, waits for one or returned one lately.
    fn has_work(&self, tenant: usize, now: Instant) -> bool {
        self.held[tenant] > 0
            || self.returned[tenant].is_some_and(|at| now.duration_since(at) < RECENT)
            || self.waiting.iter().any(|(w, _)| *w == tenant)
    }

    /// Each tenant's share: the slots over the tenants with work (counting `tenant`).
    fn share(&self, tenant: usize, slots: usize, now: Instant) -> usize {
        let others = (0..self.held.len())
            .filter(|t| *t != tenant && self.has_work(*t, now))
            .count();
        (slots / (others + 1)).max(1)
    }

    /// Whether `tenant` may take a free slot now: below its share, or nobody else has work.
    fn may_take(&self, tenant: usize, slots: usize, now: Instant) -> bool {
        let share = self.share(tenant, slots, now);
        self.held[tenant] < share || share == slots
    }

    /// The waiter to serve next: the first below its share, else the first allowed over it.
    fn next_waiter(&self, slots: usize, now: Instant) -> Option<usize> {
        let below = self
            .waiting
            .iter()
            .position(|(t, _)| self.held[*t] < self.share(*t, slots, now));
        below.or_else(|| {
            self.waiting
                .iter()
                .position(|(t, _)| self.may_take(*t, slots, now))
        })
    }
}

/// One tenant's place at the [`Cores`].
#[derive(Debug, Clone)]
pub struct Seat {
    cores: Arc<Cores>,
    tenant: usize,
}

/// A core held for one batch; dropping it hands the core on.
#[derive(Debug)]
pub struct Slot {
    cores: Arc<Cores>,
    tenant: usize,
    held: bool,
}

impl Cores {
    /// `slots` cores (at least one).
    pub fn new(slots: usize) -> Arc<Cores> {
        Arc::new(Cores {
            slots: slots.max(1),
            state: Mutex::new(Schedule {
                free: slots.max(1),
                held: Vec::new(),
                returned: Vec::new(),
                waiting: VecDeque::new(),
            }),
        })
    }

    /// As many slots as this machine has cores.
    pub fn of_this_machine() -> Arc<Cores> {
        Cores::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The place of tenant number `tenant`.
    pub fn seat(self: &Arc<Cores>, tenant: usize) -> Seat {
        let mut s = self.schedule();
        if s.held.len() <= tenant {
            s.held.resize(tenant + 1, 0);
            s.returned.resize(tenant + 1, None);
        }
        Seat {
            cores: self.clone(),
            tenant,
        }
    }

    fn schedule(&self) -> MutexGuard<'_, Schedule> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn grant(self: &Arc<Cores>, s: &mut Schedule, tenant: usize) -> Slot {
        s.free -= 1;
        s.held[tenant] += 1;
        Slot {
            cores: self.clone(),
            tenant,
            held: true,
        }
    }

    /// A slot of `tenant` came back: serve the waiters it can.
    fn release(self: &Arc<Cores>, tenant: usize) {
        let mut s = self.schedule();
        let now = Instant::now();
        s.free += 1;
        s.held[tenant] -= 1;
        s.returned[tenant] = Some(now);
        while s.free > 0 {
            let Some(at) = s.next_waiter(self.slots, now) else {
                break;
            };
            let (waiter, answer) = s.waiting.remove(at).expect("a waiter at its index");
            let slot = self.grant(&mut s, waiter);
            if let Err(mut unwanted) = answer.send(slot) {
                // The waiter is gone: take the slot back here, not in its drop (we hold the lock).
                unwanted.held = false;
                s.free += 1;
                s.held[waiter] -= 1;
            }
        }
    }
}

impl Seat {
    /// This tenant will not want a core for a while (it waits for its CPU budget): it stops
    /// counting as a tenant with work once it holds none, so others may use every core.
    pub fn step_away(&self) {
        let mut s = self.cores.schedule();
        if s.held[self.tenant] == 0 {
            s.returned[self.tenant] = None;
        }
    }

    /// Waits for a core: at once while one is free and this tenant is below its share or
    /// alone with work; otherwise in line.
    pub async fn acquire(&self) -> Slot {
        let waiting = {
            let mut s = self.cores.schedule();
            if s.free > 0 && s.may_take(self.tenant, self.cores.slots, Instant::now()) {
                return self.cores.grant(&mut s, self.tenant);
            }
            let (answer, waiting) = oneshot::channel();
            s.waiting.push_back((self.tenant, answer));
            waiting
        };
        waiting
            .await
            .expect("the cores answer every waiter they keep")
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.held {
            self.cores.release(self.tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Whether `future` finishes within a moment.
    async fn ready<T>(future: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_millis(50), future)
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_tenant_alone_uses_every_core() {
        let cores = Cores::new(2);
        let (a, _b) = (cores.seat(0), cores.seat(1));
        let first = ready(a.acquire()).await.expect("a free core");
        let second = ready(a.acquire())
            .await
            .expect("the idle tenant's core too");
        assert!(ready(a.acquire()).await.is_none(), "no third core");
        drop((first, second));
    }

    #[tokio::test]
    async fn a_freed_core_goes_to_the_tenant_below_its_share() {
        let cores = Cores::new(2);
        let (a, b) = (cores.seat(0), cores.seat(1));
        let a1 = a.acquire().await;
        let a2 = a.acquire().await;
        let b_waits = tokio::spawn({
            let b = b.clone();
            async move { b.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let a_waits = tokio::spawn({
            let a = a.clone();
            async move { a.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a1);
        let b1 = ready(b_waits).await.expect("b served first").unwrap();
        assert!(!a_waits.is_finished(), "a took more than its share");
        drop(a2);
        let a3 = ready(a_waits).await.expect("a served next").unwrap();
        // With both busy, each holds one: a gets no second core while b waits for one.
        let b_again = tokio::spawn(async move { b.acquire().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(ready(a.acquire()).await.is_none(), "both cores are held");
        drop(b1);
        let b2 = ready(b_again).await.expect("b's turn").unwrap();
        drop((a3, b2));
    }

    #[tokio::test]
    async fn a_tenant_between_batches_keeps_its_share() {
        let cores = Cores::new(2);
        let (a, b) = (cores.seat(0), cores.seat(1));
        let a1 = a.acquire().await;
        drop(b.acquire().await); // b streams: one batch done, the next coming
        assert!(
            ready(a.acquire()).await.is_none(),
            "a took b's core between b's batches"
        );
        tokio::time::sleep(RECENT).await;
        let a2 = ready(a.acquire()).await.expect("b idle: a may use both");
        drop((a1, a2));
    }

    #[tokio::test]
    async fn a_tenant_that_steps_away_leaves_every_core_to_the_others() {
        let cores = Cores::new(2);
        let (a, b) = (cores.seat(0), cores.seat(1));
        let a1 = a.acquire().await;
        drop(b.acquire().await);
        b.step_away(); // b waits for its budget now
        let a2 = ready(a.acquire())
            .await
            .expect("b stepped away: a may use both");
        drop((a1, a2));
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_its_core_free() {
        let cores = Cores::new(1);
        let (a, b) = (cores.seat(0), cores.seat(1));
        let held = a.acquire().await;
        assert!(ready(b.acquire()).await.is_none(), "b waits");
        drop(held);
        let again = ready(a.acquire())
            .await
            .expect("the core came back from the gone waiter");
        drop(again);
        assert!(ready(b.acquire()).await.is_some());
    }
}
