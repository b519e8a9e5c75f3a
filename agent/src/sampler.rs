//! What the machine offers: cores, memory, OS and architecture.

use lull_protocol::message::Capacity;

/// Reads the machine's capacity figures.
#[derive(Debug)]
pub struct Sampler {
    system: sysinfo::System,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    /// A sampler; reads memory once.
    pub fn new() -> Self {
        let mut system = sysinfo::System::new();
        system.refresh_memory();
        Self { system }
    }

    /// Logical cores.
    pub fn cores(&self) -> u32 {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    }

    /// Total memory in bytes.
    pub fn memory_total(&self) -> u64 {
        self.system.total_memory()
    }

    /// Fresh capacity figures; `slots`, cap and labels come from the configuration.
    pub fn capacity(
        &mut self,
        slots: u32,
        max_task_memory: u64,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Capacity {
        self.system.refresh_memory();
        Capacity {
            cores: self.cores(),
            memory_total: self.system.total_memory(),
            memory_available: self.system.available_memory(),
            slots,
            max_task_memory,
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            labels: labels.clone(),
        }
    }
}
