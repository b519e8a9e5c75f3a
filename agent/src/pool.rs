//! Memory slots for guests: a fixed pool of size classes and a variable pool.
//!
//! Each guest (one module of a task) runs in a slot. The **fixed pool** is a set of size classes,
//! for instance four 64 MiB slots, two of 256 MiB and one of 1 GiB: a guest takes a slot of the
//! smallest class that is at least its memory cap and has room, and runs in wasmtime's pooling
//! instance allocator, whose memories stay mapped between tasks and are reset copy-on-write (a
//! warm start is an `madvise` rather than an `mmap`). Guests larger than every class draw from the
//! **variable pool**, a budget of bytes from which each takes exactly what it asks for, and run
//! in memory allocated for them alone.
//!
//! A task whose guests fit nowhere *now* waits for a slot (its assignment and lease stay with
//! the agent, and the wait is reported); a task that could never fit (more than the largest
//! class and more than the whole variable pool) is refused at once with the reason.
//!
//! All the guests of a task take their slots together, from one class, so two tasks never hold
//! half of what each needs.

use std::fmt;
use std::sync::{Arc, Mutex};

use lull_protocol::sync::lock;
use lull_protocol::units::format_size;
use serde::{Deserialize, Serialize};

/// One size class of the fixed pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotClass {
    /// The memory a guest in this class may grow to, e.g. "256MiB".
    pub size: String,
    /// How many guests of this class may run at once.
    pub slots: u32,
}

/// `[pool]` in `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// The fixed pool's size classes [default: 4 x 64 MiB, 2 x 256 MiB, 1 x 1 GiB]. Empty: no
    /// fixed pool, every guest draws from the variable pool.
    #[serde(default = "default_classes")]
    pub classes: Vec<SlotClass>,
    /// The variable pool: bytes shared by guests larger than every class [default: the
    /// agent's `max_task_memory`].
    #[serde(default)]
    pub variable: Option<String>,
}

fn default_classes() -> Vec<SlotClass> {
    [("64MiB", 4), ("256MiB", 2), ("1GiB", 1)]
        .into_iter()
        .map(|(size, slots)| SlotClass {
            size: size.into(),
            slots,
        })
        .collect()
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            classes: default_classes(),
            variable: None,
        }
    }
}

/// The pools' sizes in bytes, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// `(size, slots)` of each class, smallest first.
    pub classes: Vec<(u64, u32)>,
    /// Bytes of the variable pool.
    pub variable: u64,
}

impl PoolConfig {
    /// Reads `[pool]`; `max_task_memory` is the variable pool's default size.
    pub fn from_settings(s: &PoolSettings, max_task_memory: u64) -> anyhow::Result<Self> {
        let mut classes = Vec::new();
        for (i, c) in s.classes.iter().enumerate() {
            let size = lull_protocol::units::parse_size(&c.size)
                .map_err(|e| anyhow::anyhow!("pool.classes[{i}].size: {e}"))?;
            if size < 64 << 10 {
                anyhow::bail!(
                    "pool.classes[{i}].size: {} is smaller than one WebAssembly page (64 KiB)",
                    c.size
                );
            }
            if size > 4 << 30 {
                anyhow::bail!(
                    "pool.classes[{i}].size: {} is more than a 32-bit guest can address (4 GiB)",
                    c.size
                );
            }
            if c.slots == 0 {
                anyhow::bail!(
                    "pool.classes[{i}].slots: must be at least 1 (or leave the class out)"
                );
            }
            if classes.iter().any(|&(s, _)| s == size) {
                anyhow::bail!("pool.classes[{i}].size: two classes are {}", c.size);
            }
            classes.push((size, c.slots));
        }
        classes.sort();
        let variable = match &s.variable {
            Some(text) => lull_protocol::units::parse_size(text)
                .map_err(|e| anyhow::anyhow!("pool.variable: {e}"))?,
            None => max_task_memory,
        };
        Ok(Self { classes, variable })
    }

    /// Guests that may hold fixed slots at once.
    pub fn fixed_slots(&self) -> u32 {
        self.classes.iter().map(|&(_, n)| n).sum()
    }

    /// The most memory one guest can have here: the largest class, or the whole variable pool.
    pub fn largest_guest(&self) -> u64 {
        self.largest_class().unwrap_or(0).max(self.variable)
    }

    /// The largest class, if there is a fixed pool.
    pub fn largest_class(&self) -> Option<u64> {
        self.classes.last().map(|&(s, _)| s)
    }
}

/// Where a task's guests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Slots of this fixed class (its size in bytes), one per guest.
    Fixed(u64),
    /// This many bytes of the variable pool, for all the guests together.
    Variable(u64),
}

impl Slot {
    /// Whether the guests run in the pooling allocator.
    pub fn pooled(&self) -> bool {
        matches!(self, Slot::Fixed(_))
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slot::Fixed(size) => write!(f, "a {} slot", format_size(*size)),
            Slot::Variable(bytes) => write!(f, "{} of the variable pool", format_size(*bytes)),
        }
    }
}

#[derive(Debug)]
struct State {
    /// Free slots per class, in the order of [`PoolConfig::classes`].
    free: Vec<u32>,
    variable_free: u64,
}

/// The agent's pools: who holds which slot, and who waits.
#[derive(Debug)]
pub struct Pools {
    config: PoolConfig,
    state: Mutex<State>,
    released: tokio::sync::Notify,
}

/// Slots held by one task; dropping it gives them back and wakes the tasks waiting.
#[derive(Debug)]
pub struct Grant {
    pools: Arc<Pools>,
    slot: Slot,
    guests: u32,
}

impl Grant {
    /// What the task holds.
    pub fn slot(&self) -> Slot {
        self.slot
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        {
            let mut s = self.pools.lock();
            match self.slot {
                Slot::Fixed(size) => {
                    if let Some(i) = self
                        .pools
                        .config
                        .classes
                        .iter()
                        .position(|&(c, _)| c == size)
                    {
                        s.free[i] += self.guests;
                    }
                }
                Slot::Variable(bytes) => s.variable_free += bytes,
            }
        }
        self.pools.released.notify_waiters();
    }
}

/// A held or free count, for `lull-agent status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassUse {
    /// The class's size in bytes (for the variable pool, its whole size).
    pub size: u64,
    /// Slots in the class (1 for the variable pool).
    pub slots: u32,
    /// Slots (bytes, for the variable pool) in use.
    pub used: u64,
}

impl Pools {
    /// Empty pools of these sizes.
    pub fn new(config: PoolConfig) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                free: config.classes.iter().map(|&(_, n)| n).collect(),
                variable_free: config.variable,
            }),
            config,
            released: tokio::sync::Notify::new(),
        })
    }

    /// The sizes.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// What `guests` guests of `memory` bytes each would need: the classes that can ever take
    /// them (smallest first), or else the variable pool; an error says why they never fit.
    fn plan(&self, memory: u64, guests: u32) -> Result<Vec<usize>, String> {
        let classes: Vec<usize> = (0..self.config.classes.len())
            .filter(|&i| {
                let (size, slots) = self.config.classes[i];
                size >= memory && slots >= guests
            })
            .collect();
        if !classes.is_empty() {
            return Ok(classes);
        }
        let bytes = memory.saturating_mul(u64::from(guests));
        if bytes <= self.config.variable {
            return Ok(vec![]);
        }
        let fixed = match self.config.largest_class() {
            Some(size) => format!("its largest slot is {}", format_size(size)),
            None => "it has no fixed slots".to_string(),
        };
        Err(format!(
            "the task needs {} for {guests} guest(s) of {} each; this agent's variable pool is {} and {fixed}",
            format_size(bytes),
            format_size(memory),
            format_size(self.config.variable),
        ))
    }

    /// Takes slots for `guests` guests of `memory` bytes each if they are free now; `Ok(None)`
    /// when the task must wait, an error when it can never fit.
    pub fn try_acquire(
        self: &Arc<Self>,
        memory: u64,
        guests: u32,
    ) -> Result<Option<Grant>, String> {
        let guests = guests.max(1);
        let classes = self.plan(memory, guests)?;
        let mut s = self.lock();
        let slot = if classes.is_empty() {
            let bytes = memory * u64::from(guests);
            if s.variable_free < bytes {
                return Ok(None);
            }
            s.variable_free -= bytes;
            Slot::Variable(bytes)
        } else {
            let Some(&i) = classes.iter().find(|&&i| s.free[i] >= guests) else {
                return Ok(None);
            };
            s.free[i] -= guests;
            Slot::Fixed(self.config.classes[i].0)
        };
        Ok(Some(Grant {
            pools: self.clone(),
            slot,
            guests,
        }))
    }

    /// Why a task of this shape waits now, for people ("all 2 slots of 256 MiB are in use").
    pub fn why_waiting(&self, memory: u64, guests: u32) -> String {
        match self.plan(memory, guests.max(1)) {
            Err(e) => e,
            Ok(classes) if classes.is_empty() => {
                let s = self.lock();
                format!(
                    "waiting for {} of the variable pool: {} of {} free",
                    format_size(memory * u64::from(guests.max(1))),
                    format_size(s.variable_free),
                    format_size(self.config.variable)
                )
            }
            Ok(classes) => {
                let sizes: Vec<String> = classes
                    .iter()
                    .map(|&i| {
                        let (size, slots) = self.config.classes[i];
                        format!("{slots} x {}", format_size(size))
                    })
                    .collect();
                format!(
                    "waiting for {} memory slot(s) of at least {}: all in use ({})",
                    guests.max(1),
                    format_size(memory),
                    sizes.join(", ")
                )
            }
        }
    }

    /// Takes slots, waiting until some are free; `on_wait` is called once if the task has to
    /// wait, with the reason. An error when the task can never fit.
    pub async fn acquire(
        self: &Arc<Self>,
        memory: u64,
        guests: u32,
        on_wait: impl FnOnce(String),
    ) -> Result<Grant, String> {
        let mut on_wait = Some(on_wait);
        loop {
            // Register for the next release before looking, so none is missed in between.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(grant) = self.try_acquire(memory, guests)? {
                return Ok(grant);
            }
            if let Some(f) = on_wait.take() {
                f(self.why_waiting(memory, guests));
            }
            released.await;
        }
    }

    /// Each class's use, then the variable pool's.
    pub fn usage(&self) -> Vec<ClassUse> {
        let s = self.lock();
        let mut out: Vec<ClassUse> = self
            .config
            .classes
            .iter()
            .zip(&s.free)
            .map(|(&(size, slots), &free)| ClassUse {
                size,
                slots,
                used: u64::from(slots - free),
            })
            .collect();
        out.push(ClassUse {
            size: self.config.variable,
            slots: 1,
            used: self.config.variable - s.variable_free,
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn pools() -> Arc<Pools> {
        Pools::new(PoolConfig {
            classes: vec![(64 * MIB, 2), (256 * MIB, 1)],
            variable: 512 * MIB,
        })
    }

    #[test]
    fn settings_default_to_three_classes_and_the_task_cap() {
        let c = PoolConfig::from_settings(&PoolSettings::default(), 2 << 30).unwrap();
        assert_eq!(
            c.classes,
            vec![(64 * MIB, 4), (256 * MIB, 2), (1024 * MIB, 1)]
        );
        assert_eq!(c.variable, 2 << 30);
        assert_eq!(c.fixed_slots(), 7);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let bad = |classes: Vec<(&str, u32)>| {
            let s = PoolSettings {
                classes: classes
                    .into_iter()
                    .map(|(size, slots)| SlotClass {
                        size: size.into(),
                        slots,
                    })
                    .collect(),
                variable: None,
            };
            PoolConfig::from_settings(&s, 1 << 30)
                .unwrap_err()
                .to_string()
        };
        assert!(bad(vec![("lots", 1)]).contains("pool.classes[0].size"));
        assert!(bad(vec![("64MiB", 0)]).contains("pool.classes[0].slots"));
        assert!(bad(vec![("64MiB", 1), ("64MiB", 2)]).contains("two classes"));
        assert!(bad(vec![("8GiB", 1)]).contains("4 GiB"));
        assert!(bad(vec![("1KiB", 1)]).contains("page"));
    }

    #[test]
    fn smallest_fitting_class_first_then_larger_ones() {
        let p = pools();
        let a = p.try_acquire(10 * MIB, 1).unwrap().unwrap();
        assert_eq!(a.slot(), Slot::Fixed(64 * MIB));
        let b = p.try_acquire(64 * MIB, 1).unwrap().unwrap();
        assert_eq!(b.slot(), Slot::Fixed(64 * MIB));
        // The 64 MiB class is full: a larger free slot satisfies the task too.
        let c = p.try_acquire(10 * MIB, 1).unwrap().unwrap();
        assert_eq!(c.slot(), Slot::Fixed(256 * MIB));
        // Everything that fits is taken: wait.
        assert!(p.try_acquire(10 * MIB, 1).unwrap().is_none());
        assert!(p.why_waiting(10 * MIB, 1).contains("all in use"));
        drop(a);
        let d = p.try_acquire(10 * MIB, 1).unwrap().unwrap();
        assert_eq!(d.slot(), Slot::Fixed(64 * MIB));
    }

    #[test]
    fn a_task_takes_all_its_slots_from_one_class_or_waits() {
        let p = pools();
        let two = p.try_acquire(32 * MIB, 2).unwrap().unwrap();
        assert_eq!(two.slot(), Slot::Fixed(64 * MIB));
        // Two more guests fit no class with two free slots (the 256 MiB class has one): they
        // are too many for any class now, yet the 64 MiB class could take them later.
        assert!(p.try_acquire(32 * MIB, 2).unwrap().is_none());
        drop(two);
        assert!(p.try_acquire(32 * MIB, 2).unwrap().is_some());
    }

    #[test]
    fn larger_than_every_class_draws_from_the_variable_pool() {
        let p = pools();
        let a = p.try_acquire(300 * MIB, 1).unwrap().unwrap();
        assert_eq!(a.slot(), Slot::Variable(300 * MIB));
        assert!(!a.slot().pooled());
        assert!(p.try_acquire(300 * MIB, 1).unwrap().is_none());
        assert!(
            p.why_waiting(300 * MIB, 1)
                .contains("212 MiB of 512 MiB free")
        );
        let b = p.try_acquire(200 * MIB, 1).unwrap().unwrap();
        assert_eq!(b.slot(), Slot::Fixed(256 * MIB));
        assert_eq!(p.usage()[2].used, 300 * MIB);
        drop(a);
        assert_eq!(p.usage()[2].used, 0);
    }

    #[test]
    fn a_task_that_can_never_fit_is_refused() {
        let p = pools();
        let err = p.try_acquire(600 * MIB, 1).unwrap_err();
        assert!(err.contains("variable pool is 512 MiB"), "{err}");
        assert!(err.contains("largest slot is 256 MiB"), "{err}");
    }

    #[tokio::test]
    async fn a_waiting_task_proceeds_when_a_slot_is_freed() {
        let p = Pools::new(PoolConfig {
            classes: vec![(64 * MIB, 1)],
            variable: 0,
        });
        let held = p.try_acquire(MIB, 1).unwrap().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move {
                p.acquire(MIB, 1, move |why| tx.send(why).unwrap())
                    .await
                    .map(|g| g.slot())
            })
        };
        let why = tokio::task::spawn_blocking(move || rx.recv().unwrap())
            .await
            .unwrap();
        assert!(why.contains("all in use"), "{why}");
        assert!(!waiter.is_finished());
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(Slot::Fixed(64 * MIB)));
    }
}
